# Every test runs with EMLX as Nx's default backend, on the device named by
# EMLX_TEST_DEVICE (cpu, the default, or gpu on a CUDA build).
device = EMLX.Case.device()
Application.put_env(:nx, :default_backend, {EMLX.Backend, device: device})
Application.put_env(:emlx, :default_device, device)
# EMLX_LINALG=nx measures conformance with Nx's reference linear algebra.
if System.get_env("EMLX_LINALG") == "nx", do: Application.put_env(:emlx, :linalg, :nx)
ExUnit.start()
