defmodule EMLX.LibMLXTest do
  @moduledoc "The compile-time MLX acquisition (EMLX.LibMLX in mix.exs) stops with clear messages."
  use ExUnit.Case, async: false

  defp with_env(vars, fun) do
    old = Enum.map(vars, fn {k, _} -> {k, System.get_env(k)} end)
    Enum.each(vars, fn {k, v} -> System.put_env(k, v) end)

    try do
      fun.()
    after
      Enum.each(old, fn
        {k, nil} -> System.delete_env(k)
        {k, v} -> System.put_env(k, v)
      end)
    end
  end

  test "the build uses the wheel of LIBMLX_VARIANT (default cpu), unpacked with its layout" do
    info = EMLX.LibMLX.ensure!()

    assert info.variant in [System.get_env("LIBMLX_VARIANT", "cpu"), "custom"] or
             String.starts_with?(info.variant, "source-")

    assert File.exists?(Path.join(info.lib, "libmlx.so"))
    assert File.exists?(Path.join(info.include, "mlx/mlx.h"))
  end

  test "the NIF finds libmlx and the wheel's libraries inside priv/, so a release carries them" do
    assert_found_in_priv([])
  end

  # A GPU host of session 27 resolved libquadmath.so.0 to its own system
  # copy instead of priv/'s. While the NIF's search path was DT_RUNPATH,
  # which the loader reads after LD_LIBRARY_PATH, a system folder there did
  # exactly that (that host's environment was not recorded).
  test "a folder on LD_LIBRARY_PATH holding the same libraries does not take priv/'s place" do
    system =
      Enum.find(
        ["/lib/x86_64-linux-gnu", "/usr/lib/x86_64-linux-gnu", "/usr/lib64", "/lib64"],
        fn dir ->
          File.exists?(Path.join(dir, "libm.so.6"))
        end
      )

    assert system, "no system library folder found"
    path = Enum.join([system | List.wrap(System.get_env("LD_LIBRARY_PATH"))], ":")
    assert_found_in_priv([{"LD_LIBRARY_PATH", path}])
  end

  defp assert_found_in_priv(env) do
    priv = :code.priv_dir(:emlx) |> to_string()
    {out, 0} = System.cmd("ldd", [Path.join(priv, "libemlx.so")], env: env)

    # the C and C++ runtimes and NVIDIA's libraries come from the host
    host =
      ~r/^(linux-vdso|ld-linux|lib(c|m|pthread|dl|rt|stdc\+\+|gcc_s)\.so|lib(cuda|cu|nv|nccl|cudnn))/

    libs =
      for line <- String.split(out, "\n", trim: true),
          [_, name, path] <- [Regex.run(~r/^\s*(\S+) => (\S+)/, line)],
          not Regex.match?(host, name),
          do: {name, path}

    assert {"libmlx.so", _} = List.keyfind(libs, "libmlx.so", 0)

    for {name, path} <- libs do
      assert String.starts_with?(Path.expand(path), Path.expand(priv)),
             "#{name} resolves to #{path}, outside #{priv}"
    end
  end

  test "an unknown variant says what to set" do
    with_env([{"LIBMLX_VARIANT", "rocm"}, {"MLX_DIR", ""}, {"LIBMLX_BUILD", ""}], fn ->
      assert_raise Mix.Error, ~r/unknown LIBMLX_VARIANT="rocm".*cpu.*cuda1[23]/, fn ->
        EMLX.LibMLX.ensure!()
      end
    end)
  end

  test "an MLX_DIR without MLX says so" do
    with_env([{"MLX_DIR", System.tmp_dir!()}], fn ->
      assert_raise Mix.Error, ~r/MLX_DIR=.* has no include\/mlx\/mlx.h/, fn ->
        EMLX.LibMLX.ensure!()
      end
    end)
  end

  test "an MLX_DIR with MLX is used as is" do
    info = EMLX.LibMLX.ensure!()
    root = Path.dirname(info.lib)

    with_env([{"MLX_DIR", root}], fn ->
      assert %{variant: "custom", lib: lib} = EMLX.LibMLX.ensure!()
      assert lib == Path.join(root, "lib")
    end)
  end

  test "a version PyPI does not have says what to set" do
    cache = Path.join(System.tmp_dir!(), "emlx-cache-#{System.unique_integer([:positive])}")

    with_env(
      [
        {"LIBMLX_VERSION", "0.0.1"},
        {"LIBMLX_CACHE", cache},
        {"MLX_DIR", ""},
        {"LIBMLX_BUILD", ""}
      ],
      fn ->
        assert_raise Mix.Error, ~r/(no mlx-cpu==0.0.1 wheel|could not fetch)/, fn ->
          EMLX.LibMLX.ensure!()
        end
      end
    )
  after
    File.rm_rf!(Path.join(System.tmp_dir!(), "emlx-cache-*"))
  end

  describe "LIBMLX_BUILD=true (a source build) checks before it builds" do
    test "MLX_SRC is required and must be an MLX tree" do
      with_env([{"LIBMLX_BUILD", "true"}, {"MLX_DIR", ""}, {"MLX_SRC", ""}], fn ->
        assert_raise Mix.Error, ~r/LIBMLX_BUILD=true needs MLX_SRC/, fn ->
          EMLX.LibMLX.ensure!()
        end
      end)

      with_env([{"LIBMLX_BUILD", "true"}, {"MLX_DIR", ""}, {"MLX_SRC", System.tmp_dir!()}], fn ->
        assert_raise Mix.Error, ~r/is not an MLX source tree/, fn -> EMLX.LibMLX.ensure!() end
      end)
    end

    test "an unknown variant is refused here too" do
      with_env(
        [
          {"LIBMLX_BUILD", "true"},
          {"MLX_DIR", ""},
          {"MLX_SRC", File.cwd!()},
          {"LIBMLX_VARIANT", "rocm"}
        ],
        fn ->
          assert_raise Mix.Error, ~r/unknown LIBMLX_VARIANT="rocm"/, fn ->
            EMLX.LibMLX.ensure!()
          end
        end
      )
    end

    test "LIBMLX_ENABLE_JIT, a Metal switch, is refused on Linux" do
      src = Path.join(System.tmp_dir!(), "emlx-fake-mlx-#{System.unique_integer([:positive])}")
      File.mkdir_p!(Path.join(src, "mlx"))
      File.write!(Path.join(src, "CMakeLists.txt"), "")
      File.write!(Path.join(src, "mlx/version.h"), "#define MLX_VERSION_MAJOR 0\n")

      try do
        env = [
          {"LIBMLX_BUILD", "true"},
          {"MLX_DIR", ""},
          {"MLX_SRC", src},
          {"LIBMLX_ENABLE_JIT", "true"}
        ]

        with_env(env, fn ->
          assert_raise Mix.Error, ~r/LIBMLX_ENABLE_JIT selects MLX's Metal JIT/, fn ->
            EMLX.LibMLX.ensure!()
          end
        end)
      after
        File.rm_rf!(src)
      end
    end
  end
end
