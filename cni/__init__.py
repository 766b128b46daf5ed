"""The CNI side of underlay: spec types (``cni.spec``), the stdlib-only executable
(``cni.plugin``), and the pod datapath that the agent runs (``cni.datapath``)."""
