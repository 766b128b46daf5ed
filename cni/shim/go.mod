module underlay.io/shim

go 1.19
