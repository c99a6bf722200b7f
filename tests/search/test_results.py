"""The front's table says which quantizer the layers use."""

from presso.plan import LayerConfig, Plan, QuantConfig, plan_to_dict
from presso.search._results import _plan_summary


def test_front_table_counts_the_methods_of_quantized_layers():
    plan = Plan(layers={
        "a": LayerConfig(quant=QuantConfig(bits=4, method="gptq")),
        "b": LayerConfig(quant=QuantConfig(bits=4, method="gptq")),
        "c": LayerConfig(quant=QuantConfig(bits=3)),
        "d": LayerConfig(quant=QuantConfig(bits=16)),
    })
    assert _plan_summary(plan_to_dict(plan)).endswith(", 2 gptq, 1 rtn")
    rtn_only = Plan(layers={"a": LayerConfig(quant=QuantConfig(bits=4))})
    assert "rtn" not in _plan_summary(plan_to_dict(rtn_only))  # the default method is not spelled out
