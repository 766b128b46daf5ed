"""The CNI side of underlay: the host executable's source (``cni/shim``, a static Go
program that frames one invocation to the agent), the CNI decisions the agent makes for it
(``cni.invocation``, ``cni.request``), the spec types and socket protocol (``cni.spec``),
the conflist (``cni.conflist``) and the pod datapath the agent runs (``cni.datapath``)."""
