"""Tables and plots for people: what the CLI prints, and figures from result files."""
