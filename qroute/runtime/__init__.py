"""The runtime: instances on torch.distributed that execute Plans (route, fetch, local) exactly."""
