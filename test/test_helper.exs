# Every test runs with EMLX as Nx's default backend.
Application.put_env(:nx, :default_backend, {EMLX.Backend, device: :cpu})
Application.put_env(:emlx, :default_device, :cpu)
# EMLX_LINALG=nx measures conformance with Nx's reference linear algebra.
if System.get_env("EMLX_LINALG") == "nx", do: Application.put_env(:emlx, :linalg, :nx)
ExUnit.start()
