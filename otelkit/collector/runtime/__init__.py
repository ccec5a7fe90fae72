"""The collector runtime: configuration, component model, pipeline graph, queues."""
