defmodule EMLX.PointerTest do
  use EMLX.Case, async: true

  test ":local pointers round trip, without a copy on the way out" do
    t = emlx([[1, 2], [3, 4]], type: :s32) |> Nx.transpose()

    %Nx.Pointer{kind: :local, address: address, data_size: 16} =
      p = Nx.to_pointer(t, mode: :local)

    assert is_integer(address) and address > 0
    assert EMLX.tensor_data_ptr(t) == {address, 16}

    back =
      Nx.from_pointer({EMLX.Backend, device: device()}, p, {:s, 32}, {2, 2}, names: [:a, nil])

    assert Nx.to_list(back) == [[1, 3], [2, 4]]
    assert back.names == [:a, nil]
    # the source tensor still reads correctly (it was made contiguous in place)
    assert Nx.to_list(t) == [[1, 3], [2, 4]]
  end

  test "a bad :local address raises instead of crashing" do
    p = %Nx.Pointer{kind: :local, address: 8, data_size: 16}

    assert_raise ArgumentError, ~r/cannot read the pointer's memory/, fn ->
      Nx.from_pointer(EMLX.Backend, p, {:s, 32}, {4})
    end
  end

  test ":ipc round trip through POSIX shared memory; the receiver unlinks" do
    t = emlx([1.5, 2.5, 3.5], type: :f32)

    %Nx.Pointer{kind: :ipc, handle: "/emlx-" <> _ = name, data_size: 12} =
      p = Nx.to_pointer(t, mode: :ipc)

    assert File.exists?("/dev/shm" <> name)
    {:ok, %File.Stat{mode: mode}} = File.stat("/dev/shm" <> name)
    assert Bitwise.band(mode, 0o777) == 0o400

    back = Nx.from_pointer(EMLX.Backend, p, {:f, 32}, {3})
    assert Nx.to_list(back) == [1.5, 2.5, 3.5]
    refute File.exists?("/dev/shm" <> name)
  end

  test "tensor_to_shm/2 honours permissions and shm_unlink/1 removes unopened segments" do
    {name, 8} = EMLX.tensor_to_shm(emlx([1, 2], type: :s32), 0o600)
    {:ok, %File.Stat{mode: mode}} = File.stat("/dev/shm" <> name)
    assert Bitwise.band(mode, 0o777) == 0o600
    assert EMLX.shm_unlink(name) == :ok
    refute File.exists?("/dev/shm" <> name)
    # already gone: still fine
    assert EMLX.shm_unlink(name) == :ok
  end

  test "a missing or short segment raises" do
    assert_raise ArgumentError, ~r/shm_open/, fn ->
      Nx.from_pointer(EMLX.Backend, %Nx.Pointer{kind: :ipc, handle: "/emlx-none"}, {:u, 8}, {4})
    end

    {name, 2} = EMLX.tensor_to_shm(emlx([1, 2], type: :u8))

    assert_raise ArgumentError, ~r/smaller than the tensor/, fn ->
      Nx.from_pointer(EMLX.Backend, %Nx.Pointer{kind: :ipc, handle: name}, {:u, 8}, {64})
    end

    EMLX.shm_unlink(name)
  end

  @python """
  import sys, struct
  from multiprocessing import shared_memory, resource_tracker
  name, n = sys.argv[1].lstrip("/"), int(sys.argv[2])
  seg = shared_memory.SharedMemory(name=name)
  vals = struct.unpack("<%dd" % n, bytes(seg.buf[: 8 * n]))
  seg.close()
  seg.unlink()
  out = shared_memory.SharedMemory(name="emlx-from-python-" + sys.argv[3], create=True, size=8 * n)
  out.buf[: 8 * n] = struct.pack("<%dd" % n, *[v * 10 for v in vals])
  out.close()
  resource_tracker.unregister(out._name, "shared_memory")
  print(",".join(repr(v) for v in vals))
  """

  @tag :python
  test "another OS process (python3) reads an :ipc tensor and EMLX reads its segment" do
    python = System.find_executable("python3") || flunk("python3 is needed for this test")
    tag = Integer.to_string(System.unique_integer([:positive]))
    t = emlx([1.25, -2.0, 1.0e10], type: :f64)
    %Nx.Pointer{handle: name} = Nx.to_pointer(t, mode: :ipc)

    {out, 0} = EMLX.PyEnv.cmd(python, ["-c", @python, name, "3", tag])
    assert String.trim(out) == "1.25,-2.0,10000000000.0"

    back =
      Nx.from_pointer(
        EMLX.Backend,
        %Nx.Pointer{kind: :ipc, handle: "/emlx-from-python-" <> tag},
        {:f, 64},
        {3}
      )

    assert Nx.to_list(back) == [12.5, -20.0, 1.0e11]
    refute File.exists?("/dev/shm/emlx-from-python-" <> tag)
  end

  @torch """
  import sys, numpy as np, torch
  from multiprocessing import shared_memory, resource_tracker
  seg = shared_memory.SharedMemory(name=sys.argv[1].lstrip("/"))
  n = int(sys.argv[2])
  x = torch.from_numpy(np.frombuffer(seg.buf, dtype=np.float32, count=n).copy()).cuda()
  seg.close()
  seg.unlink()
  y = (x * 2 + 1).cpu().numpy()
  out = shared_memory.SharedMemory(name="emlx-from-torch-" + sys.argv[3], create=True, size=4 * n)
  out.buf[: 4 * n] = y.tobytes()
  out.close()
  resource_tracker.unregister(out._name, "shared_memory")
  print(torch.cuda.get_device_name(), float(x.sum()))
  """

  # Runs with EMLX_TEST_DEVICE=gpu where python3 has PyTorch with CUDA
  # (test/test_helper.exs excludes it elsewhere).
  @tag :torch_cuda
  test "a PyTorch process on the GPU reads an :ipc tensor of a :gpu array, and EMLX reads its answer" do
    tag = Integer.to_string(System.unique_integer([:positive]))
    t = Nx.iota({1000}, type: :f32, backend: {EMLX.Backend, device: :gpu})
    %Nx.Pointer{kind: :ipc, handle: name} = Nx.to_pointer(t, mode: :ipc)

    {out, 0} =
      EMLX.PyEnv.cmd(System.find_executable("python3"), ["-c", @torch, name, "1000", tag])

    assert out =~ "499500.0"

    back =
      Nx.from_pointer(
        {EMLX.Backend, device: :gpu},
        %Nx.Pointer{kind: :ipc, handle: "/emlx-from-torch-" <> tag},
        {:f, 32},
        {1000}
      )

    assert back.data.device == :gpu
    assert Nx.to_list(back) == Enum.map(0..999, &(&1 * 2.0 + 1.0))
  end
end
