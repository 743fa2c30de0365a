# Every test runs with EMLX as Nx's default backend, on the device named by
# EMLX_TEST_DEVICE (cpu, the default, or gpu on a CUDA build).
device = EMLX.Case.device()
Application.put_env(:nx, :default_backend, {EMLX.Backend, device: device})
Application.put_env(:emlx, :default_device, device)
# EMLX_LINALG=nx measures conformance with Nx's reference linear algebra.
if System.get_env("EMLX_LINALG") == "nx", do: Application.put_env(:emlx, :linalg, :nx)
# The PyTorch-on-CUDA pointer test runs only on the GPU, with python3 able
# to import torch and see a CUDA device.
torch_cuda? =
  device == :gpu and
    match?(
      {"True" <> _, 0},
      System.find_executable("python3") &&
        System.cmd("python3", ["-c", "import torch; print(torch.cuda.is_available())"],
          stderr_to_stdout: true
        )
    )

# On :gpu every async test shares the device's one default queue, and MLX's
# CUDA backend compiles each new kernel (a gather, scatter or fused element-wise
# shape) with NVRTC at first use, seconds each on a fresh host (cached under
# MLX_PTX_CACHE_DIR, default /tmp/mlx). A test queued behind others' compiles
# can wait past ExUnit's 60 s default: the whole suite took 531 s there.
timeout = if device == :gpu, do: 600_000, else: 60_000

# :batch_bit_equal tests check that a batch decodes each prompt to the very
# tokens it gets alone. That holds on the CPU; on the GPU a batch's rows go
# through other kernels (cuBLAS picks GEMM kernels by row count; a padded
# batch attends with a key mask), and their bf16 rounding flips near-tied
# greedy picks of the random test model (1 prompt of 8 on the H200).
# :nccl tests need a CUDA build and two GPUs (EMLX_TEST_NCCL=1 on such a host).
exclude =
  if(torch_cuda?, do: [], else: [:torch_cuda]) ++
    if(device == :gpu, do: [:batch_bit_equal], else: []) ++
    if(System.get_env("EMLX_TEST_NCCL") == "1", do: [], else: [:nccl])

ExUnit.start(exclude: exclude, timeout: timeout)
