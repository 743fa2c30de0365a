# Every test runs with EMLX as Nx's default backend.
Application.put_env(:nx, :default_backend, {EMLX.Backend, device: :cpu})
Application.put_env(:emlx, :default_device, :cpu)
ExUnit.start()
