"""Names a spec may not use: they would collide with a generated class or module.

A spec's parameters become attributes of a generated ``torch.nn.Module``, Keras
``Layer`` or Flax module, and its names appear, prefixed, among the locals of the
generated source. A parameter named ``bias`` or ``training`` would silently replace
what torch keeps there; one named ``dtype`` or ``weights`` breaks a Keras layer.
The loader refuses every name listed here (for every name in a spec: input, states,
parameters and equations), so such a spec fails when it is loaded, by name, never
later inside a framework.

The lists are data, kept here in one place. Each framework's test file checks that
every public attribute of that framework's base classes and of the generated classes
is listed here (or cannot be a spec name at all), so the lists cannot go stale when a
framework or an emitter adds one.

Examples:
    >>> reserved_by("training")
    'torch.nn.Module'
    >>> reserved_by("W_i") is None
    True
"""

from __future__ import annotations

import keyword

#: origin -> names. Names starting with "_" need no entry: a spec name starts with a letter.
RESERVED: dict[str, frozenset[str]] = {
    # dir(torch.nn.Module()), public names (torch 2.13)
    "torch.nn.Module": frozenset(
        """
        T_destination add_module apply bfloat16 buffers call_super_init children compile cpu cuda double
        dump_patches eval extra_repr float forward get_buffer get_extra_state get_parameter get_submodule half
        ipu load_state_dict modules mtia named_buffers named_children named_modules named_parameters parameters
        register_backward_hook register_buffer register_forward_hook register_forward_pre_hook
        register_full_backward_hook register_full_backward_pre_hook register_load_state_dict_post_hook
        register_load_state_dict_pre_hook register_module register_parameter register_state_dict_post_hook
        register_state_dict_pre_hook requires_grad_ set_extra_state set_submodule share_memory state_dict to
        to_empty train training type xpu zero_grad
    """.split()
    ),
    # dir(keras.layers.Layer()), public names (Keras 3.15; on its torch backend a Layer is also
    # an nn.Module and adds torch_params)
    "keras.layers.Layer": frozenset(
        """
        activity_regularizer add_loss add_metric add_variable add_weight autocast build build_from_config built
        call call_signature_parameters compute_dtype compute_mask compute_output_shape compute_output_spec
        count_params dtype dtype_policy from_config get_build_config get_config get_weights input input_dtype
        input_spec load_own_variables losses metrics metrics_variables name non_trainable_variables
        non_trainable_weights output path quantization_mode quantize quantized_build quantized_call
        rematerialized_call save_own_variables set_weights stateless_call supports_jit supports_masking
        symbolic_call torch_params trainable trainable_variables trainable_weights variable_dtype variables weights
    """.split()
    ),
    # dir(flax.linen.Module) and its dataclass fields (parent, name, scope)
    "flax.linen.Module": frozenset(
        """
        apply bind clone copy get_variable has_rng has_variable init init_with_output is_initializing
        is_mutable_collection lazy_init make_rng module_paths name param parent path perturb put_variable scope
        setup sow tabulate unbind variable variables
    """.split()
    ),
    # dir(flax.nnx.Module)
    "flax.nnx.Module": frozenset("eval iter_children iter_modules perturb set_attributes sow train".split()),
    # Public attributes the generated Cell, Layer, LinenCell and NNXCell classes add
    # (constructor arguments, fields, methods), every backend.
    "a generated class": frozenset(
        """
        batch_first bias bidirectional canonical_params cell cells check_state dropout export_canonical
        export_params features from_params fused get_initial_state go_backwards hidden_features hidden_size
        hoist_input in_features initial_state initialize_carry inner_loop input_size jit_compile load_canonical load_params
        num_directions num_feature_axes num_layers output_size param_dtype params reset_parameters reset_state
        reset_states return_sequences return_state seed sequence sequence_with_vjp single_state spec_hash
        spec_name state_names state_size stateful states step tensors units unroll zero_output_for_mask
        bias_constraint bias_initializer bias_regularizer compiled generated_module get_dropout_mask
        get_recurrent_dropout_mask kernel_constraint kernel_initializer kernel_regularizer native_config proj_size
        recurrent_constraint recurrent_dropout recurrent_initializer recurrent_regularizer reset_dropout_mask
        reset_recurrent_dropout_mask scan spec_text use_bias
    """.split()
    ),
    # Module-level names of the generated sources (imports, constants, functions, classes), every backend.
    "a generated module": frozenset(
        """
        BACKWARDS BIAS_NAMES CLASS_NAME COMPILED_MAX_WORK COMPILED_MIN_STEPS Cell DropoutRNNCell FUSED_CELL FUSED_KERNEL HOISTED_WIDTHS INITIALIZERS INPUT_PARAM JAX_INITIALIZERS LINEAR_SCAN Layer LinearScan LinenCell SCAN_CPU_MAX_WIDTH SCAN_CPU_MIN_STEPS
        HOISTED_IN_PRODUCTS NATIVE_ARGUMENTS NNXCell OPSET PARAM_NAMES PARAM_TABLE PackedSequence ROLES SPEC SPEC_HASH SPEC_NAME SPEC_TOML
        STATE_NAMES STEP_PROJECTIONS Sequence KERNEL_NAMES RECURRENT_NAMES
        UNITS_PARAM add_biases backward bidirectional build_graphs build_model cell_step check_inputs contextlib forward
        functools fuse gemm gemm_for helper importlib init_from_key init_from_table init_param_from_key init_params jax
        jnp keras math nn nnx np numpy
        numpy_helper once_differentiable onnx onnxruntime ops pack_padded_sequence pad_packed_sequence prologue
        run_numpy sequence step step_backward step_products sys tf torch vjp_numpy warnings zlib
    """.split()
    ),
    # Generated locals a spec name would meet under a shared prefix: a state named
    # "outputs" would become g_outputs, the name of the output cotangents.
    "the locals of generated code": frozenset("final outputs params state state0 ys".split()),
    "Python": frozenset([*keyword.kwlist, *keyword.softkwlist]),
}

#: Every reserved name -> the first origin listed for it.
_ORIGIN: dict[str, str] = {}
for _origin, _names in RESERVED.items():
    for _name in _names:
        _ORIGIN.setdefault(_name, _origin)

#: Suffixes the emitters append to the compiler's own temporaries (v_L4_blocks): a spec
#: name ending so could meet one of them.
RESERVED_SUFFIXES = ("_blocks",)


def reserved_by(name: str) -> str | None:
    """What ``name`` is reserved by (a framework class, the generated code, Python), else None.

    Args:
        name: a name a spec would declare.

    Returns:
        The origin of the reservation (``"torch.nn.Module"``, ``"a generated class"``, ...) or None.
    """
    if name in _ORIGIN:
        return _ORIGIN[name]
    if name.endswith(RESERVED_SUFFIXES):
        return "the temporaries of generated code"
    return None


def unreserved(names, spec=None) -> list[str]:
    """The names in ``names`` a spec could use but this module does not reserve.

    ``spec``: the spec a generated class was made from; its own names (parameters that
    became attributes, ...) are expected there and left out. Tests use this to keep the
    lists complete: every public attribute of a framework's base class and of a generated
    class must be reserved.

    Args:
        names: attribute or variable names.
        spec: the spec a generated class was made from, or None.

    Returns:
        The names, sorted, that are valid spec names and neither reserved nor the spec's own.

    Examples:
        >>> unreserved(["forward", "_private", "W_i", "sigmoid"])
        ['W_i']
    """
    from .expr import FUNCTIONS, IDENTIFIER

    own = set()
    if spec is not None:
        own = {spec.input, *spec.state_names, *spec.param_names, *(n for n, _ in spec.equations)}
    return sorted(
        n
        for n in set(names)
        if IDENTIFIER.fullmatch(n) and n not in FUNCTIONS and n not in own and reserved_by(n) is None
    )
