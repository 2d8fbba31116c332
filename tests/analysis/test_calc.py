"""`moe-bench calc`: presets, config files and transformers configs in; a table or one JSON object out; exit 2 on
bad input with one line on stderr. Exact counts against transformers' own models: tests/analysis/test_exact_counts.py."""

import argparse
import json

import pytest

from analysis import calc, exact_counts


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="moe-bench")
    calc.register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.func(args)


def calc_json(capsys, *argv: str) -> dict:
    assert main(["calc", *argv, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def formula_json(capsys, *argv: str) -> dict:
    return calc_json(capsys, *argv)["formula"]


def test_json_has_integer_counts(capsys):
    whole = calc_json(capsys, "mixtral-8x7b")
    assert (whole["input"], whole["exact"], whole["comparison"]) == ("preset", None, None)
    assert "published figures" in whole["exact_error"]
    out = whole["formula"]
    assert out["total_params"] == 46_702_792_704
    assert isinstance(out["active_params"], int) and 12.8e9 < out["active_params"] < 13.0e9
    assert set(out["breakdown"]) == {
        "embeddings", "attention", "dense_ffn", "routed_experts", "shared_experts", "routers", "norms", "lm_head",
    }  # fmt: skip
    assert sum(v["total"] for v in out["breakdown"].values()) == out["total_params"]
    assert sum(v["active"] for v in out["breakdown"].values()) == out["active_params"]
    assert out["weight_bytes"] == 2 * out["total_params"]
    assert out["moe_layer"] == {
        "d_model": 4096, "d_ff": 14336, "num_experts": 8, "top_k": 2, "activation": "swiglu",
        "num_shared_experts": 0, "shared_d_ff": 0,
    }  # fmt: skip
    assert out["published"]["total"] == 46.7e9


def test_table_shows_resident_against_active(capsys):
    assert main(["calc", "mixtral-8x7b"]) == 0
    text = capsys.readouterr().out
    assert "46.70B" in text and "12.88B" in text
    assert "93.41 GB" in text  # all 46.7B parameters resident in bf16
    assert "dense model of equal active parameters: 12.88B" in text


def test_dtype_and_context(capsys):
    out = formula_json(capsys, "olmoe-1b-7b", "--dtype", "fp8", "--context", "0")
    assert out["weight_bytes"] == out["total_params"]
    assert out["attention_flops_per_token"] == 0


# A transformers config.json small enough to read at a glance (qwen3_moe keys).
TOY_HF = {
    "model_type": "qwen3_moe", "vocab_size": 64, "hidden_size": 16, "num_hidden_layers": 2,
    "num_attention_heads": 2, "num_key_value_heads": 1, "intermediate_size": 32, "moe_intermediate_size": 8,
    "num_experts": 4, "num_experts_per_tok": 2,
}  # fmt: skip

TOY_TOML = """\
vocab_size = 10
d_model = 4
num_layers = 2
num_heads = 2
num_kv_heads = 1
head_dim = 2
d_ff = 6
num_experts = 4
top_k = 2
expert_d_ff = 3
num_shared_experts = 1
shared_d_ff = 2
first_k_dense = 1
"""


def test_toml_model_config(tmp_path, capsys):
    path = tmp_path / "toy.toml"
    path.write_text(TOY_TOML)
    whole = calc_json(capsys, str(path))
    out = whole["formula"]
    assert (out["model"], out["total_params"], out["active_params"]) == ("toy", 452, 380)  # derived in test_models
    assert out["published"] is None
    assert whole["input"] == "ModelConfig file" and whole["exact"] is None


def test_transformers_config_json(tmp_path, capsys):
    hf = {
        "architectures": ["MixtralForCausalLM"], "model_type": "mixtral", "vocab_size": 32000, "hidden_size": 4096,
        "intermediate_size": 14336, "num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 8,
        "num_local_experts": 8, "num_experts_per_tok": 2, "tie_word_embeddings": False, "rms_norm_eps": 1e-5,
    }  # fmt: skip
    path = tmp_path / "config.json"
    path.write_text(json.dumps(hf))
    assert formula_json(capsys, str(path))["total_params"] == 46_702_792_704


def test_without_transformers_a_config_json_is_counted_by_formula_alone(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(exact_counts, "transformers_available", lambda: False)
    path = tmp_path / "config.json"
    path.write_text(json.dumps(TOY_HF))
    out = calc_json(capsys, str(path))
    assert out["formula"]["total_params"] > 0
    assert (out["exact"], out["comparison"], out["exact_error"]) == (None, None, "transformers is not installed")
    assert main(["calc", str(path)]) == 0
    assert "exact counts: none: transformers is not installed" in capsys.readouterr().out
    assert main(["calc", "deepseek_v3"]) == 2  # a model_type needs transformers
    assert capsys.readouterr().err.endswith("an existing file, nor a model_type (needs transformers)\n")


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("none", None, "'{path}' is neither a preset"),
        ("bad.json", "{not json", "{path}: not valid JSON"),
        ("bad.toml", "d_model = = 4", "{path}: not valid TOML"),
        ("list.json", "[1, 2]", "{path}: expected an object of ModelConfig fields, got list"),
        ("missing.toml", TOY_TOML.replace("d_model = 4\n", ""), "{path}: missing field 'd_model'"),
        ("extra.toml", TOY_TOML + "flavour = 1\n", "{path}: unknown field 'flavour'"),
        ("neg.toml", TOY_TOML.replace("d_ff = 6", "d_ff = -6"), "{path}: ModelConfig.d_ff must be a positive"),
        (  # our formula needs hidden_size, and transformers knows no such model_type to fill it in
            "hf.json",
            '{"model_type": "not_a_model", "vocab_size": 8}',
            "{path}: transformers config: missing key 'hidden_size'; and no exact count: ",
        ),
    ],
)
def test_bad_input_exits_2_with_one_line(tmp_path, capsys, name, content, message):
    path = tmp_path / name
    if content is not None:
        path.write_text(content)
    assert main(["calc", str(path)]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.startswith("moe-bench calc: " + message.format(path=path))
    assert captured.err.count("\n") == 1


def test_unknown_preset_and_bad_context_exit_2(capsys):
    assert main(["calc", "mixtral-8x8b"]) == 2
    assert "neither a preset (deepseek-v2-lite" in capsys.readouterr().err
    assert main(["calc", "mixtral-8x7b", "--context", "-1"]) == 2
    assert capsys.readouterr().err == "moe-bench calc: --context must be >= 0, got -1\n"


def test_ep_table_marks_where_communication_outweighs_compute(capsys):
    assert main(["calc", "deepseek-v3", "--json", "--ep", "--tokens-per-rank", "1024"]) == 0
    ep = json.loads(capsys.readouterr().out)["expert_parallel"]
    rows = ep["world_sizes"]
    assert [r["world_size"] for r in rows][:4] == [1, 2, 4, 8] and all(256 % r["world_size"] == 0 for r in rows)
    assert rows[0]["dispatch_s"] == 0 and rows[0]["compute_to_comm"] == float("inf")  # one rank: no all-to-all
    first_below = next((r["world_size"] for r in rows if r["compute_to_comm"] < 1), None)
    assert ep["stops_paying_at"] == first_below is not None
    # More bandwidth across nodes moves the break-even point out.
    assert main(["calc", "deepseek-v3", "--json", "--ep", "--tokens-per-rank", "1024", "--inter-gbs", "5000"]) == 0
    faster = json.loads(capsys.readouterr().out)["expert_parallel"]["stops_paying_at"]
    assert faster is None or faster > first_below
