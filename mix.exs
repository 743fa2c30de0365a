defmodule EMLX.MixProject do
  use Mix.Project

  @version "0.1.0"

  def project do
    [
      app: :emlx,
      version: @version,
      elixir: "~> 1.18",
      start_permanent: Mix.env() == :prod,
      compilers: [:emlx_nif] ++ Mix.compilers(),
      deps: deps(),
      elixirc_paths: elixirc_paths(Mix.env()),
      test_coverage: [ignore_modules: []],
      description: "Nx backend and defn compiler for Apple's MLX, on Linux CPU and CUDA",
      aliases: [clean: ["clean", &clean_nif/1]]
    ]
  end

  def application do
    [extra_applications: [:logger], mod: {EMLX.Application, []}]
  end

  defp elixirc_paths(:test), do: ["lib", "test/support"]
  defp elixirc_paths(_), do: ["lib"]

  # Deps come from Hex. On a machine without Hex access, point
  # EMLX_DEPS_PATH at a folder holding checkouts named nx/, complex/ and
  # telemetry/ (with a Hex archive installed and HEX_OFFLINE=1); each is
  # then used as a path dependency, as Axon does with AXON_NX_PATH.
  defp deps do
    [
      dep(:nx, "~> 0.13"),
      dep(:complex, "~> 0.6"),
      dep(:telemetry, "~> 1.0")
    ]
  end

  defp dep(name, requirement) do
    case System.get_env("EMLX_DEPS_PATH") do
      nil -> {name, requirement}
      "" -> {name, requirement}
      root -> {name, path: Path.join(root, Atom.to_string(name)), override: true}
    end
  end

  defp clean_nif(_) do
    File.rm_rf!(Path.join(Mix.Project.app_path(), "priv"))
    File.rm_rf!(Path.join(Mix.Project.app_path(), "c_obj"))
  end
end

defmodule Mix.Tasks.Compile.EmlxNif do
  @moduledoc false
  # Fetches libmlx (see EMLX.LibMLX below) and builds priv/libemlx.so with make.
  use Mix.Task.Compiler

  @impl true
  def run(_args) do
    mlx = EMLX.LibMLX.ensure!()

    erts_include =
      Path.join([
        to_string(:code.root_dir()),
        "erts-#{:erlang.system_info(:version)}",
        "include"
      ])

    env = [
      {"MLX_INCLUDE_DIR", mlx.include},
      {"MLX_LIB_DIR", mlx.lib},
      {"ERTS_INCLUDE_DIR", erts_include},
      {"BUILD_DIR", Path.join(Mix.Project.app_path(), "c_obj")},
      # The NIF goes straight into the build's priv dir, so build paths never share it.
      {"PRIV_DIR", Path.join(Mix.Project.app_path(), "priv")}
    ]

    File.mkdir_p!(Mix.Project.app_path())
    priv = Path.join(Mix.Project.app_path(), "priv")
    # An older layout linked priv/ to the source tree; the NIF now lives in the build.
    if match?({:ok, %{type: :symlink}}, File.lstat(priv)), do: File.rm!(priv)
    File.write!(Path.join(Mix.Project.app_path(), "libmlx.txt"), inspect(mlx))
    EMLX.LibMLX.copy_to!(mlx, Path.join(priv, "libmlx"))

    case System.cmd("make", ["-s", "--no-print-directory"], env: env, stderr_to_stdout: true) do
      {out, 0} ->
        if String.trim(out) != "", do: Mix.shell().info(out)
        {:ok, []}

      {out, status} ->
        Mix.raise("building the EMLX NIF failed (make exited with #{status}):\n#{out}")
    end
  end
end

defmodule EMLX.LibMLX do
  @moduledoc false
  # Where libmlx comes from, at compile time.
  #
  #   MLX_DIR          an existing install with include/ and lib/libmlx.so
  #   LIBMLX_BUILD     true: build MLX from the source tree at MLX_SRC (cmake)
  #   LIBMLX_VERSION   the MLX wheel version (default 0.32.4)
  #   LIBMLX_VARIANT   cpu (Linux default), cuda13 or cuda12
  #   LIBMLX_CACHE     where wheels are kept (default: the user cache dir)
  #
  # The official PyPI wheel is downloaded, its sha256 checked against the
  # index, and unpacked with its site-packages layout kept (the CUDA
  # library finds its NVIDIA libraries by rpath relative to itself).

  @default_version "0.32.4"
  @variants %{"cpu" => "mlx-cpu", "cuda13" => "mlx-cuda-13", "cuda12" => "mlx-cuda-12"}
  @index "https://pypi.org/simple/"

  def ensure! do
    cond do
      env("MLX_DIR", nil) -> from_dir!(env("MLX_DIR", nil))
      env("LIBMLX_BUILD", "false") in ["true", "1"] -> from_source!()
      true -> from_wheel!()
    end
  end

  @doc """
  Copies libmlx into `dest` (the NIF's priv/libmlx, which its RPATH
  names relative to itself): the wheel's `mlx/lib` and its bundled
  `*.libs` folder, keeping the wheel's layout so libmlx's own relative
  RPATH still finds them. A file already there with the same size stays.
  """
  def copy_to!(%{source: source, lib: lib}, dest) do
    libs =
      if File.dir?(Path.join(source, "mlx")),
        do: Path.wildcard(Path.join(source, "*.libs")),
        else: []

    for {from, to} <- [
          {lib, Path.join(dest, "mlx/lib")}
          | Enum.map(libs, &{&1, Path.join(dest, Path.basename(&1))})
        ],
        file <- File.ls!(from),
        String.contains?(file, ".so") do
      target = Path.join(to, file)
      src = Path.join(from, file)

      size = File.stat!(src).size

      unless match?({:ok, %{size: ^size}}, File.stat(target)) do
        File.mkdir_p!(to)
        File.cp!(src, target)
      end
    end

    # The CUDA build compiles kernels at run time (NVRTC) against the
    # headers it finds beside itself (mlx/include, with CCCL's in cccl/).
    include = Path.join(source, "mlx/include")

    if File.dir?(Path.join(include, "cccl")) and
         not File.dir?(Path.join(dest, "mlx/include/cccl")) do
      File.cp_r!(include, Path.join(dest, "mlx/include"))
    end

    :ok
  end

  defp from_dir!(dir) do
    include = Path.join(dir, "include")
    lib = Path.join(dir, "lib")

    unless File.exists?(Path.join(include, "mlx/mlx.h")) and
             File.exists?(Path.join(lib, "libmlx.so")) do
      Mix.raise(
        "MLX_DIR=#{dir} has no include/mlx/mlx.h and lib/libmlx.so. " <>
          "Point MLX_DIR at an MLX install, or unset it to use the PyPI wheel."
      )
    end

    %{include: include, lib: lib, variant: "custom", version: "custom", source: dir}
  end

  # LIBMLX_BUILD=true: MLX built with cmake from the checkout at MLX_SRC
  # (the machine may have no network) against the system's OpenBLAS and
  # LAPACKE (Debian: cmake libopenblas-dev liblapacke-dev), installed into
  # LIBMLX_CACHE/libmlx-<version>-source[-debug]/ once. MLX's CMake fetches
  # nlohmann/json and fmt from GitHub; LIBMLX_DEPS names a folder holding
  # their trees as json/ and fmt/ to build offline. GGUF is left out (EMLX
  # reads safetensors). LIBMLX_ENABLE_DEBUG=true builds libmlx with debug
  # info and assertions (CMake's Debug: unoptimized); LIBMLX_ENABLE_JIT is MLX's Metal
  # JIT switch upstream and changes nothing on Linux (the CPU JIT of
  # mx::compile is always there), so it is refused rather than ignored.
  defp from_source! do
    variant = variant!()

    src =
      env("MLX_SRC", nil) ||
        Mix.raise("LIBMLX_BUILD=true needs MLX_SRC, the path of an MLX source checkout")

    version_h = Path.join(src, "mlx/version.h")

    unless File.exists?(Path.join(src, "CMakeLists.txt")) and File.exists?(version_h) do
      Mix.raise("MLX_SRC=#{src} is not an MLX source tree (no CMakeLists.txt and mlx/version.h)")
    end

    if env("LIBMLX_ENABLE_JIT", nil) do
      Mix.raise(
        "LIBMLX_ENABLE_JIT selects MLX's Metal JIT, which Linux builds do not have; unset it"
      )
    end

    version =
      ~w(MAJOR MINOR PATCH)
      |> Enum.map(fn part ->
        [_, n] = Regex.run(~r/#define MLX_VERSION_#{part} (\d+)/, File.read!(version_h))
        n
      end)
      |> Enum.join(".")

    debug? = env("LIBMLX_ENABLE_DEBUG", "false") in ["true", "1"]
    cache = env("LIBMLX_CACHE", :filename.basedir(:user_cache, ~c"emlx") |> to_string())
    name = "libmlx-#{version}-source#{if debug?, do: "-debug", else: ""}-#{variant}"
    prefix = Path.join(cache, name)
    marker = Path.join(prefix, ".emlx-complete")

    unless File.exists?(marker) do
      build = Path.join(cache, name <> "-build")
      deps = env("LIBMLX_DEPS", nil)

      fetch =
        if deps,
          do:
            for(
              {dep, var} <- [{"json", "JSON"}, {"fmt", "FMT"}],
              do: "-DFETCHCONTENT_SOURCE_DIR_#{var}=#{Path.expand(Path.join(deps, dep))}"
            ),
          else: []

      flags =
        [
          "-DCMAKE_BUILD_TYPE=#{if debug?, do: "Debug", else: "Release"}",
          "-DCMAKE_INSTALL_PREFIX=#{prefix}",
          "-DCMAKE_INSTALL_LIBDIR=lib",
          "-DBUILD_SHARED_LIBS=ON",
          "-DMLX_BUILD_TESTS=OFF",
          "-DMLX_BUILD_EXAMPLES=OFF",
          "-DMLX_BUILD_BENCHMARKS=OFF",
          "-DMLX_BUILD_PYTHON_BINDINGS=OFF",
          "-DMLX_BUILD_METAL=OFF",
          "-DMLX_BUILD_GGUF=OFF",
          "-DMLX_BUILD_CUDA=#{if String.starts_with?(variant, "cuda"), do: "ON", else: "OFF"}",
          "-DBLA_VENDOR=OpenBLAS"
        ] ++ fetch

      jobs = env("LIBMLX_BUILD_JOBS", Integer.to_string(System.schedulers_online()))
      Mix.shell().info("Building MLX #{version} from #{src} into #{prefix} (#{jobs} jobs)")
      cmake!(["-S", src, "-B", build | flags])
      cmake!(["--build", build, "--parallel", jobs])
      cmake!(["--install", build])
      File.write!(marker, "source #{src} #{version}\n")
    end

    %{
      include: Path.join(prefix, "include"),
      lib: Path.join(prefix, "lib"),
      variant: "source-#{variant}",
      version: version,
      source: prefix
    }
  end

  defp variant! do
    variant = env("LIBMLX_VARIANT", "cpu")

    if Map.has_key?(@variants, variant),
      do: variant,
      else:
        Mix.raise(
          "unknown LIBMLX_VARIANT=#{inspect(variant)}; set it to one of: " <>
            Enum.join(Map.keys(@variants), ", ")
        )
  end

  defp cmake!(args) do
    cmake = System.find_executable("cmake") || Mix.raise("LIBMLX_BUILD=true needs cmake")
    {_, status} = System.cmd(cmake, args, into: IO.stream(:stdio, :line), stderr_to_stdout: true)
    if status != 0, do: Mix.raise("cmake #{Enum.join(args, " ")} failed (exit #{status})")
  end

  defp from_wheel! do
    version = env("LIBMLX_VERSION", @default_version)
    variant = variant!()
    package = Map.fetch!(@variants, variant)

    cache = env("LIBMLX_CACHE", :filename.basedir(:user_cache, ~c"emlx") |> to_string())
    site = Path.join([cache, "libmlx-#{version}-#{variant}", "site-packages"])
    marker = Path.join(site, ".emlx-complete")

    unless File.exists?(marker) do
      install_wheel!(package, version, site, cache)
      File.write!(marker, "#{package}==#{version}\n")
    end

    %{
      include: Path.join(site, "mlx/include"),
      lib: Path.join(site, "mlx/lib"),
      variant: variant,
      version: version,
      source: site
    }
  end

  defp env(name, default) do
    case System.get_env(name) do
      nil -> default
      "" -> default
      v -> v
    end
  end

  defp install_wheel!(package, version, site, cache) do
    # Mix prunes OTP apps from the code path unless asked for.
    for app <- [:crypto, :public_key, :ssl, :inets], do: Mix.ensure_application!(app)
    {:ok, _} = Application.ensure_all_started([:inets, :ssl])
    wheel = verified_wheel(package, version, cache) || download_wheel!(package, version, cache)

    tmp = site <> ".tmp"
    File.rm_rf!(tmp)
    File.mkdir_p!(tmp)

    case :zip.extract(String.to_charlist(wheel), cwd: String.to_charlist(tmp)) do
      {:ok, _} -> :ok
      {:error, reason} -> Mix.raise("could not unpack #{wheel}: #{inspect(reason)}")
    end

    File.rm_rf!(site)
    File.mkdir_p!(Path.dirname(site))
    File.rename!(tmp, site)
  end

  # A wheel downloaded and checked before: its sha256 (from the index) sits beside it.
  defp verified_wheel(package, version, cache) do
    prefix = String.replace(package, "-", "_") <> "-" <> version <> "-"

    Path.wildcard(Path.join([cache, "wheels", prefix <> "*.whl"]))
    |> Enum.find(fn wheel ->
      case File.read(wheel <> ".sha256") do
        {:ok, sha} -> sha256(File.read!(wheel)) == String.trim(sha)
        _ -> false
      end
    end)
  end

  defp download_wheel!(package, version, cache) do
    {filename, url, sha} = pick_wheel!(package, version)
    wheel = Path.join([cache, "wheels", filename])
    File.mkdir_p!(Path.dirname(wheel))
    Mix.shell().info("EMLX: downloading #{filename}")
    body = get!(url, "the #{package} wheel")
    actual = sha256(body)

    if actual != sha do
      Mix.raise(
        "the downloaded #{filename} has sha256 #{actual}, but the index says #{sha}. " <>
          "Nothing was installed. Retry, or set MLX_DIR to an MLX install you trust."
      )
    end

    File.write!(wheel, body)
    File.write!(wheel <> ".sha256", sha <> "\n")
    wheel
  end

  # The PEP 503 simple index: <a href="URL#sha256=HASH">FILENAME</a>
  defp pick_wheel!(package, version) do
    body = get!(@index <> package <> "/", "the PyPI index for #{package}")
    arch = to_string(:erlang.system_info(:system_architecture)) |> String.split("-") |> hd()
    prefix = String.replace(package, "-", "_") <> "-" <> version <> "-"

    Regex.scan(~r|<a[^>]*href="([^"#]+)#sha256=([0-9a-f]{64})"[^>]*>([^<]+)</a>|, body)
    |> Enum.map(fn [_, url, sha, filename] -> {String.trim(filename), url, sha} end)
    |> Enum.find(fn {f, _, _} ->
      String.starts_with?(f, prefix) and String.contains?(f, "manylinux") and
        String.ends_with?(f, "_#{arch}.whl")
    end) ||
      Mix.raise(
        "PyPI has no #{package}==#{version} wheel for Linux #{arch}. " <>
          "Set LIBMLX_VERSION to a published version, or MLX_DIR to an MLX install."
      )
  end

  defp get!(url, what) do
    opts = [
      ssl: [
        verify: :verify_peer,
        cacerts: :public_key.cacerts_get(),
        customize_hostname_check: [match_fun: :public_key.pkix_verify_hostname_match_fun(:https)]
      ],
      timeout: 300_000,
      connect_timeout: 20_000
    ]

    case :httpc.request(:get, {String.to_charlist(url), []}, opts, body_format: :binary) do
      {:ok, {{_, 200, _}, _, body}} ->
        body

      {:ok, {{_, status, _}, _, _}} ->
        Mix.raise("fetching #{what} from #{url} failed with HTTP #{status}")

      {:error, reason} ->
        Mix.raise(
          "could not fetch #{what} from #{url} (#{inspect(reason)}). " <>
            "Offline? Set MLX_DIR to an unpacked MLX install, or LIBMLX_CACHE to a cache " <>
            "that already holds the wheel."
        )
    end
  end

  defp sha256(data), do: :crypto.hash(:sha256, data) |> Base.encode16(case: :lower)
end
