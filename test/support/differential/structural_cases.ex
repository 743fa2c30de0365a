defmodule EMLX.Differential.Cases.Structural do
  @moduledoc false
  # Differential cases (see EMLX.Differential.Cases): shape ops, reductions,
  # sorting, dot, indexing and creation.

  use EMLX.Differential.Cases

  # {op, type classes, domain}
  @reductions [
    {:sum, :all, :any},
    {:product, :all, {:range, -1.5, 1.5}},
    {:reduce_max, :real, :any},
    {:reduce_min, :real, :any},
    {:all, :all, :bool},
    {:any, :all, :bool}
  ]

  @reduction_variants [
    {{3, 1, 5}, []},
    {{3, 1, 5}, [axes: [0]]},
    {{3, 1, 5}, [axes: [0, 2], keep_axes: true]},
    {{3, 1, 5}, [axes: [-1]]},
    {{7, 3}, [axes: [1]]},
    {{7, 3}, [keep_axes: true]},
    {{}, []},
    {{1}, [axes: [0]]}
  ]

  @arg_variants [
    {{7, 3}, [axis: 0]},
    {{7, 3}, [axis: 1, tie_break: :high]},
    {{7, 3}, [axis: 1, keep_axis: true]},
    {{3, 1, 5}, []},
    {{3, 1, 5}, [axis: 2, tie_break: :high]},
    {{3, 1, 5}, [axis: 0, keep_axis: true, tie_break: :low]},
    {{1}, []},
    {{}, []}
  ]

  # {op, type classes, domain}
  @cumulative [
    {:cumulative_sum, :all, :any},
    {:cumulative_product, :all, {:range, -1.5, 1.5}},
    {:cumulative_max, :real, :any},
    {:cumulative_min, :real, :any}
  ]

  @cumulative_variants [
    {{7, 3}, [axis: 0]},
    {{7, 3}, [axis: 1, reverse: true]},
    {{3, 1, 5}, [axis: 2]},
    {{3, 1, 5}, [axis: 0, reverse: true]},
    {{1}, []}
  ]

  @sort_variants [
    {{7, 3}, [axis: 0]},
    {{7, 3}, [axis: 1, direction: :desc]},
    {{3, 1, 5}, [axis: 2]},
    {{3, 1, 5}, [axis: 0, direction: :desc]},
    {{9}, [direction: :desc]},
    {{1}, []}
  ]

  # {shape a, contract a, batch a, shape b, contract b, batch b}
  @dots [
    {{3}, [0], [], {3}, [0], []},
    {{7, 3}, [1], [], {3}, [0], []},
    {{7, 3}, [1], [], {3, 4}, [0], []},
    {{7, 3}, [0], [], {7, 2}, [0], []},
    {{2, 3, 4}, [2], [0], {2, 4, 5}, [1], [0]},
    {{3, 1, 5}, [0, 2], [], {5, 3}, [1, 0], []},
    {{3}, [], [], {2}, [], []}
  ]

  @dot_mixed D.type_pairs(~w(s8:f32 u8:s8 s32:s64 f16:f32 bf16:f64 c64:f32))

  @doc "The cases, in table order."
  def cases do
    all = D.types_of(:all)

    shape_ops =
      for type <- all do
        reshapes =
          for {s, to} <- [{{3, 1, 5}, {5, 3}}, {{7, 3}, {21}}, {{}, {1, 1}}, {{1}, {}}],
              do: D.new_case({Nx, :reshape}, [t(type, s), to], group: "reshape")

        squeezes =
          for {s, o} <- [{{3, 1, 5}, []}, {{3, 1, 5}, [axes: [1]]}, {{1}, []}],
              do: D.new_case({Nx, :squeeze}, [t(type, s), o], group: "squeeze")

        transposes =
          for {s, o} <- [
                {{3, 1, 5}, [axes: [2, 0, 1]]},
                {{7, 3}, []},
                {{3, 1, 5}, [axes: [1, 2, 0]]}
              ],
              do: D.new_case({Nx, :transpose}, [t(type, s), o], group: "transpose")

        broadcasts =
          for {s, to, o} <- [
                {{3, 1, 5}, {2, 3, 4, 5}, []},
                {{3}, {3, 4}, [axes: [0]]},
                {{7, 3}, {2, 7, 4, 3}, [axes: [1, 3]]},
                {{}, {7, 3}, []},
                {{1}, {3, 1, 5}, []}
              ],
              do: D.new_case({Nx, :broadcast}, [t(type, s), to, o], group: "broadcast")

        pads =
          for {s, config} <- [
                {{7, 3}, [{1, 2, 0}, {-1, 1, 2}]},
                {{7, 3}, [{-2, -1, 1}, {0, 0, 0}]},
                {{3, 1, 5}, [{0, 0, 1}, {1, 1, 0}, {-1, -2, 2}]},
                {{1}, [{2, 0, 3}]},
                {{}, []}
              ],
              do: D.new_case({Nx, :pad}, [t(type, s), t(type, {}), config], group: "pad")

        reverses =
          for {s, o} <- [{{3, 1, 5}, [axes: [0, 2]]}, {{7, 3}, []}, {{7, 3}, [axes: [1]]}],
              do: D.new_case({Nx, :reverse}, [t(type, s), o], group: "reverse")

        index = fn v -> t({:s, 32}, {}, {:values, [v]}) end

        slices =
          for {s, starts, lens, o} <- [
                {{7, 3}, [1, 0], [4, 3], [strides: [2, 1]]},
                {{3, 1, 5}, [1, 0, 1], [2, 1, 4], [strides: [1, 1, 3]]},
                {{7, 3}, [0, 1], [7, 2], []},
                {{7, 3}, {:list, [index.(2), index.(1)]}, [4, 2], []},
                {{7, 3}, {:list, [index.(5), index.(-1)]}, [4, 3], [strides: [2, 1]]},
                {{3, 1, 5}, {:list, [index.(9), 0, t({:u, 8}, {}, {:values, [1]})]}, [2, 1, 3],
                 []},
                {{7, 3}, {:list, [t({:s, 64}, {}, {:values, [3]}), 0]}, [3, 3], [strides: [1, 2]]}
              ],
              do: D.new_case({Nx, :slice}, [t(type, s), starts, lens, o], group: "slice")

        put_slices =
          for {s, starts, ss} <- [
                {{7, 3}, [1, 1], {2, 2}},
                {{3, 1, 5}, [0, 0, 2], {2, 1, 3}},
                {{7, 3}, {:list, [index.(6), index.(-2)]}, {2, 2}},
                {{7, 3}, {:list, [index.(3), 0]}, {4, 3}},
                {{1}, [0], {1}}
              ],
              do:
                D.new_case({Nx, :put_slice}, [t(type, s), starts, t(type, ss)],
                  group: "put_slice"
                )

        concats =
          for {shapes, o} <- [
                {[{7, 3}, {2, 3}], [axis: 0]},
                {[{3, 1, 5}, {3, 2, 5}], [axis: 1]},
                {[{7, 3}, {7, 1}, {7, 2}], [axis: 1]},
                {[{1}, {1}], []}
              ],
              do:
                D.new_case({Nx, :concatenate}, [{:list, Enum.map(shapes, &t(type, &1))}, o],
                  group: "concatenate"
                )

        stacks =
          for {shapes, o} <- [
                {[{7, 3}, {7, 3}], [axis: 0]},
                {[{7, 3}, {7, 3}, {7, 3}], [axis: 2]},
                {[{3, 1, 5}, {3, 1, 5}], [axis: 1]},
                {[{}, {}], []}
              ],
              do:
                D.new_case({Nx, :stack}, [{:list, Enum.map(shapes, &t(type, &1))}, o],
                  group: "stack"
                )

        reshapes ++
          squeezes ++
          transposes ++
          broadcasts ++ pads ++ reverses ++ slices ++ put_slices ++ concats ++ stacks
      end
      |> List.flatten()
      |> Kernel.++(
        for {a, b} <- [
              {{:s, 8}, {:f, 32}},
              {{:u, 8}, {:s, 8}},
              {{:f, 16}, {:bf, 16}},
              {{:s, 64}, {:c, 64}}
            ] do
          [
            D.new_case({Nx, :concatenate}, [{:list, [t(a, {7, 3}), t(b, {2, 3})]}, [axis: 0]],
              group: "concatenate"
            ),
            D.new_case({Nx, :stack}, [{:list, [t(a, {7, 3}), t(b, {7, 3})]}, [axis: 1]],
              group: "stack"
            ),
            D.new_case({Nx, :put_slice}, [t(b, {7, 3}), [2, 1], t(a, {3, 2})], group: "put_slice"),
            D.new_case({Nx, :pad}, [t(a, {7, 3}), t(b, {}), [{1, 1, 1}, {0, -1, 0}]],
              group: "pad"
            )
          ]
        end
        |> List.flatten()
      )

    reductions =
      for {op, classes, domain} <- @reductions,
          type <- D.types_of(classes),
          {shape, opts} <- @reduction_variants do
        D.new_case({Nx, op}, [t(type, shape, domain), opts], group: "#{op} #{D.type_name(type)}")
      end ++
        for op <- [:sum, :reduce_max, :reduce_min, :all, :any], type <- D.types_of(:f) do
          D.new_case({Nx, op}, [t(type, {7, 3}, :special), [axes: [1]]],
            group: "#{op} #{D.type_name(type)}"
          )
        end ++
        for op <- [:argmax, :argmin], type <- D.types_of(:real), {shape, opts} <- @arg_variants do
          D.new_case({Nx, op}, [t(type, shape, :ties), opts], group: "#{op}")
        end ++
        for op <- [:argmax, :argmin],
            type <- D.types_of(:f),
            {shape, opts} <- Enum.take(@arg_variants, 3) do
          D.new_case({Nx, op}, [t(type, shape, :ties_nan), opts], group: "#{op}")
        end ++
        for {op, classes, domain} <- @cumulative,
            type <- D.types_of(classes),
            {shape, opts} <- @cumulative_variants do
          D.new_case({Nx, op}, [t(type, shape, domain), opts], group: "#{op}")
        end ++
        for op <- [:cumulative_max, :cumulative_min, :cumulative_sum], type <- D.types_of(:f) do
          D.new_case({Nx, op}, [t(type, {7, 3}, :special), [axis: 0]], group: "#{op}")
        end

    sorts =
      for op <- [:sort, :argsort], type <- D.types_of(:real), {shape, opts} <- @sort_variants do
        opts = if op == :argsort, do: opts ++ [stable: true], else: opts
        D.new_case({Nx, op}, [t(type, shape, :ties), opts], group: "#{op}")
      end ++
        for op <- [:sort, :argsort],
            type <- D.types_of(:f),
            {shape, opts} <- Enum.take(@sort_variants, 2) do
          opts = if op == :argsort, do: opts ++ [stable: true], else: opts
          D.new_case({Nx, op}, [t(type, shape, :ties_nan), opts], group: "#{op}")
        end ++
        for type <- [{:u, 8}, {:s, 64}, {:f, 32}] do
          D.new_case(
            {Nx, :argsort},
            [t(type, {7, 3}, :ties), [axis: 1, type: :s64, stable: true]],
            group: "argsort"
          )
        end

    dots =
      for type <- all, {sa, ca, ba, sb, cb, bb} <- @dots, domain <- [:small, :wide] do
        domain = if D.class(type) in [:u, :s], do: domain, else: :any

        D.new_case({Nx, :dot}, [t(type, sa, domain), ca, ba, t(type, sb, domain), cb, bb],
          group: "dot #{D.type_name(type)}"
        )
      end
      |> Enum.uniq_by(& &1.id)
      |> Kernel.++(
        for {ta, tb} <- @dot_mixed, {sa, ca, ba, sb, cb, bb} <- Enum.take(@dots, 5) do
          D.new_case({Nx, :dot}, [t(ta, sa, :small), ca, ba, t(tb, sb, :small), cb, bb],
            group: "dot mixed types"
          )
        end
      )

    indexing =
      for type <- all do
        idx = fn shape, dims -> t({:s, 32}, shape, {:index_rows, dims}) end

        [
          D.new_case({Nx, :gather}, [t(type, {7, 3}), idx.({4, 2}, [7, 3]), []], group: "gather"),
          D.new_case({Nx, :gather}, [t(type, {3, 1, 5}), idx.({2, 3}, [3, 1, 5]), []],
            group: "gather"
          ),
          D.new_case({Nx, :gather}, [t(type, {3, 1, 5}), idx.({2, 2, 3}, [3, 1, 5]), []],
            group: "gather"
          ),
          D.new_case({Nx, :gather}, [t(type, {7, 3}), idx.({4, 1}, [3]), [axes: [1]]],
            group: "gather"
          ),
          D.new_case(
            {Nx, :gather},
            [t(type, {7, 3}), t({:u, 8}, {5, 1}, {:index_rows, [7]}), [axes: [0]]],
            group: "gather"
          ),
          D.new_case({Nx, :take}, [t(type, {7, 3}), t({:s, 32}, {4}, {:ints, 0, 6}), [axis: 0]],
            group: "take"
          ),
          D.new_case(
            {Nx, :take},
            [t(type, {7, 3}), t({:s, 64}, {2, 2}, {:ints, 0, 2}), [axis: 1]],
            group: "take"
          ),
          D.new_case(
            {Nx, :take},
            [t(type, {3, 1, 5}), t({:u, 8}, {3}, {:ints, 0, 4}), [axis: 2]],
            group: "take"
          ),
          D.new_case({Nx, :take}, [t(type, {7, 3}), t({:s, 32}, {}, {:values, [4]}), []],
            group: "take"
          ),
          D.new_case(
            {Nx, :take_along_axis},
            [t(type, {7, 3}), t({:s, 32}, {7, 5}, {:ints, 0, 2}), [axis: 1]],
            group: "take_along_axis"
          ),
          D.new_case(
            {Nx, :take_along_axis},
            [t(type, {7, 3}), t({:s, 32}, {4, 3}, {:ints, 0, 6}), [axis: 0]],
            group: "take_along_axis"
          ),
          D.new_case(
            {Nx, :take_along_axis},
            [t(type, {3, 1, 5}), t({:u, 16}, {3, 1, 2}, {:ints, 0, 4}), [axis: 2]],
            group: "take_along_axis"
          ),
          D.new_case(
            {Nx, :indexed_add},
            [t(type, {7, 3}, :small), idx.({5, 2}, [7, 3]), t(type, {5}, :small), []],
            group: "indexed_add"
          ),
          D.new_case(
            {Nx, :indexed_add},
            [t(type, {7, 3}, :small), idx.({9, 2}, [2, 2]), t(type, {9}, :small), []],
            group: "indexed_add"
          ),
          D.new_case(
            {Nx, :indexed_add},
            [t(type, {7, 3}, :small), idx.({4, 1}, [7]), t(type, {4, 3}, :small), [axes: [0]]],
            group: "indexed_add"
          ),
          D.new_case(
            {Nx, :indexed_add},
            [t(type, {3, 1, 5}, :small), idx.({3, 3}, [3, 1, 5]), t(type, {3}, :small), []],
            group: "indexed_add"
          ),
          D.new_case(
            {Nx, :indexed_put},
            [t(type, {7, 3}), t({:s, 32}, {5, 2}, {:unique_index, [7, 3]}), t(type, {5}), []],
            group: "indexed_put"
          ),
          D.new_case(
            {Nx, :indexed_put},
            [
              t(type, {7, 3}),
              t({:s, 32}, {4, 1}, {:unique_index, [7]}),
              t(type, {4, 3}),
              [axes: [0]]
            ],
            group: "indexed_put"
          ),
          D.new_case(
            {Nx, :indexed_put},
            [
              t(type, {3, 1, 5}),
              t({:s, 64}, {4, 3}, {:unique_index, [3, 1, 5]}),
              t(type, {4}),
              []
            ],
            group: "indexed_put"
          )
        ]
      end
      |> List.flatten()

    creation =
      for type <- all do
        [
          D.new_case({Nx, :iota}, [{3, 1, 5}, [type: type]], group: "iota"),
          D.new_case({Nx, :iota}, [{7, 3}, [type: type, axis: 1]], group: "iota"),
          D.new_case({Nx, :eye}, [{4, 4}, [type: type]], group: "eye"),
          D.new_case({Nx, :eye}, [{2, 3, 4}, [type: type]], group: "eye"),
          D.new_case({Nx, :tensor}, [if(D.class(type) == :u, do: 200, else: -3), [type: type]],
            group: "constant"
          ),
          D.new_case({Nx, :broadcast}, [7, {3, 1, 5}], group: "constant")
        ]
      end
      |> List.flatten()
      |> Enum.uniq_by(& &1.id)

    shape_ops ++ reductions ++ sorts ++ dots ++ indexing ++ creation
  end
end
