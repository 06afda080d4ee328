"""Causal language models: nesting a GPT-2 (heads, FFN, layers), its metrics, and a whole run.

A tiny GPT-2-family teacher (2 layers, d 32) is saved with `save_pretrained` beside a byte-level
tokenizer; the corpus is a slice of the Python documentation (`pydoc_data.topics`)."""
from __future__ import annotations

import copy
import json
import math

import pytest
import torch

pytest.importorskip("transformers")

from compressor.cli import main  # noqa: E402
from compressor.config import CompressConfig  # noqa: E402
from compressor.lm.corpus import Passage, last_word_passages, python_docs, read_documents  # noqa: E402
from compressor.lm.example import byte_tokenizer  # noqa: E402
from compressor.lm.gpt import (  # noqa: E402
    LogitsOnly,
    Shape,
    dense_model,
    full_shape,
    kept_layers,
    nested_forward,
    scaled_shape,
    sort_by_importance,
)
from compressor.lm.hf import transformers  # noqa: E402
from compressor.lm.metrics import last_word_accuracy, token_scores  # noqa: E402
from compressor.tasks import CausalLM, ImageClassification, task_for  # noqa: E402

FAST_PROFILE = """name = "host-fast"
backend = "onnxruntime-cpu"
measured = true
threads = 1
warmup_runs = 2
warmup_seconds = 0.0
repeats = 10
min_seconds = 0.02
stat = "p50"
round_to = 8
"""


def _tiny_gpt(n_layer: int = 2, n_embd: int = 32, n_head: int = 4, n_positions: int = 32, seed: int = 0):
    tf = transformers()
    torch.manual_seed(seed)
    config = tf.GPT2Config(vocab_size=259, n_positions=n_positions, n_embd=n_embd, n_layer=n_layer, n_head=n_head,
                           resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    return tf.GPT2LMHeadModel(config).eval()


@pytest.fixture(scope="module")
def lm_files(tmp_path_factory):
    """A tiny GPT-2 teacher folder (a few steps trained: better than uniform), its text, a fast profile."""
    d = tmp_path_factory.mktemp("lm")
    corpus = d / "docs.txt"
    corpus.write_text("\n\n".join(python_docs()[:30]), encoding="utf-8")
    tok = byte_tokenizer()
    model = _tiny_gpt()
    ids = torch.tensor(tok(corpus.read_text()[:20000], add_special_tokens=False)["input_ids"])
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    model.train()
    for _ in range(30):
        starts = torch.randint(0, len(ids) - 33, (8,))
        w = torch.stack([ids[s:s + 33] for s in starts.tolist()])
        loss = torch.nn.functional.cross_entropy(model(w[:, :-1]).logits.flatten(0, 1), w[:, 1:].flatten())
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    model.save_pretrained(d / "gpt")
    tok.save_pretrained(d / "gpt")
    profile = d / "host-fast.toml"
    profile.write_text(FAST_PROFILE)
    return {"teacher": d / "gpt", "corpus": corpus, "profile": profile, "dir": d}


# ----------------------------------------------------------------------------- nesting


def _masked_forward(model, ids: torch.Tensor, shape: Shape) -> torch.Tensor:
    """The full model with heads, FFN neurons and layers past `shape` switched off by masks:
    transformers' own head_mask, a zeroing hook on each FFN activation, and the blocks that the
    importance order drops left out."""
    m = copy.deepcopy(model)
    order = model.config.nested_layer_order
    m.transformer.h = torch.nn.ModuleList([m.transformer.h[i] for i in sorted(order[:shape.layers])])
    m.config.n_layer = shape.layers
    head_mask = torch.zeros(shape.layers, model.config.n_head)
    head_mask[:, :shape.heads] = 1
    keep = torch.zeros(full_shape(model).ffn)
    keep[:shape.ffn] = 1
    for blk in m.transformer.h:
        blk.mlp.act.register_forward_hook(lambda _m, _i, out: out * keep)
    m.config._attn_implementation = "eager"  # head_mask is applied by the eager attention
    return m(ids, head_mask=head_mask, use_cache=False).logits  # the kept blocks keep their old layer_idx


@pytest.mark.parametrize("shape", [Shape(3, 4, 128), Shape(2, 2, 64), Shape(1, 1, 8), Shape(3, 3, 40)])
def test_dense_size_equals_masked_full_model(shape):
    model = _tiny_gpt(n_layer=3)
    ids = torch.randint(0, 259, (2, 12))
    ordered = sort_by_importance(model, ids)
    with torch.no_grad():
        masked = _masked_forward(ordered, ids, shape)
        dense = dense_model(ordered, shape)
        assert torch.allclose(dense(ids).logits, masked, atol=1e-5)
        assert torch.allclose(nested_forward(ordered, ids, shape), masked, atol=1e-5)
    c = dense.config
    assert (c.n_layer, c.n_inner) == (shape.layers, shape.ffn)
    assert all(blk.attn.num_heads == shape.heads for blk in dense.transformer.h)


def test_importance_order_keeps_the_function_and_sorts_heads():
    model = _tiny_gpt()
    ids = torch.randint(0, 259, (2, 16))
    ordered = sort_by_importance(model, ids)
    with torch.no_grad():
        assert torch.allclose(ordered(ids).logits, model(ids).logits, atol=1e-5)
    # the most important FFN neuron comes first: its mean |activation| is the largest
    acts = {}
    ordered.transformer.h[0].mlp.act.register_forward_hook(lambda _m, _i, out: acts.setdefault("a", out))
    with torch.no_grad():
        ordered(ids)
    mean = acts["a"].abs().mean(dim=(0, 1))
    assert mean[0] == mean.max()


def test_layer_order_nests_and_drops_the_block_that_matters_least():
    model = _tiny_gpt(n_layer=4)
    ids = torch.randint(0, 259, (2, 16), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():  # block 2 made harmful: large random writes into the residual stream
        for lin in (model.transformer.h[2].attn.c_proj, model.transformer.h[2].mlp.c_proj):
            lin.weight.normal_(0, 1.0)
    ordered = sort_by_importance(model, ids)
    order = ordered.config.nested_layer_order
    assert sorted(order) == [0, 1, 2, 3] and order[-1] == 2  # its removal lowers the loss: dropped first
    assert kept_layers(ordered.config, 3) == [0, 1, 3]
    assert all(set(kept_layers(ordered.config, k)) <= set(kept_layers(ordered.config, k + 1)) for k in range(1, 4))
    # a dense 3-block size is those blocks, renumbered; nested and dense agree, the full size is the model
    shape = Shape(3, 4, 128)
    dense = dense_model(ordered, shape)
    assert dense.config.n_layer == 3 and not hasattr(dense.config, "nested_layer_order")
    with torch.no_grad():
        assert torch.allclose(dense(ids).logits, nested_forward(ordered, ids, shape), atol=1e-5)
        assert torch.allclose(dense(ids).logits, _masked_forward(ordered, ids, shape), atol=1e-5)
        assert torch.allclose(nested_forward(ordered, ids), model(ids).logits, atol=1e-4)


def test_family_keeps_its_layer_order_through_save_pretrained(tmp_path):
    ordered = sort_by_importance(_tiny_gpt(n_layer=3), torch.randint(0, 259, (2, 16)))
    ordered.save_pretrained(tmp_path)
    again = transformers().GPT2LMHeadModel.from_pretrained(tmp_path)
    assert again.config.nested_layer_order == ordered.config.nested_layer_order


def test_dense_size_saves_and_loads_with_transformers(tmp_path):
    model = _tiny_gpt()
    small = dense_model(model, Shape(1, 2, 16))
    small.save_pretrained(tmp_path)
    again = transformers().GPT2LMHeadModel.from_pretrained(tmp_path).eval()
    ids = torch.randint(0, 259, (1, 9))
    with torch.no_grad():
        assert torch.allclose(again(ids).logits, small(ids).logits, atol=1e-6)


def test_scaled_shapes_nest_and_refuse_what_does_not_fit():
    full = Shape(6, 8, 1024)
    shapes = [scaled_shape(full, r) for r in (1.0, 0.7, 0.5, 0.3, 0.1)]
    assert shapes[0] == full
    assert all(b.nests_in(a) for a, b in zip(shapes, shapes[1:]))
    with pytest.raises(ValueError):
        dense_model(_tiny_gpt(), Shape(3, 4, 128))


def test_width_rule_keeps_every_block_and_scales_heads_and_ffn():
    full = Shape(6, 8, 1024)
    shapes = [scaled_shape(full, r, 16, rule="width") for r in (1.0, 0.675, 0.35, 0.245, 0.175)]
    assert shapes[0] == full
    assert {s.layers for s in shapes} == {6}
    assert [s.heads for s in shapes] == [8, 5, 3, 2, 1]
    assert [s.ffn for s in shapes] == [1024, 688, 352, 256, 176]
    assert all(b.nests_in(a) for a, b in zip(shapes, shapes[1:]))
    # the balanced rule drops blocks at the same ratios
    assert scaled_shape(full, 0.35, 16).layers == 4
    with pytest.raises(ValueError, match="shape rule"):
        scaled_shape(full, 0.5, rule="depth")


def test_onnx_export_has_dynamic_batch_and_sequence(tmp_path):
    import onnxruntime as ort

    from compressor.export import export_onnx

    small = dense_model(_tiny_gpt(), Shape(2, 3, 64))
    ids = torch.randint(0, 259, (3, 20))
    onnx = export_onnx(LogitsOnly(small), ids, tmp_path / "m.onnx", input_name="input_ids",
                       dynamic={1: "sequence"}, slim=False, atol=1e-4)
    assert onnx.parity_ok, onnx.notes
    session = ort.InferenceSession(str(onnx.path))
    for shape in [(1, 5), (4, 31)]:
        x = torch.randint(0, 259, shape)
        got = session.run(None, {"input_ids": x.numpy()})[0]
        with torch.no_grad():
            assert abs(got - small(x).logits.numpy()).max() < 1e-4


def test_kv_cache_decoder_step_matches_the_full_forward(tmp_path):
    from compressor.hardware import load_profile
    from compressor.lm.decode import export_decode_step, measure_decode_step

    small = dense_model(_tiny_gpt(n_layer=3), Shape(2, 3, 64))
    made = export_decode_step(small, torch.randint(0, 259, (2, 24)), tmp_path / "decode.onnx")
    assert made.parity_ok and made.past == 23, made  # checked at 23 cached tokens and at 7
    profile = load_profile(str(FAST_PROFILE_PATH(tmp_path)))
    report = measure_decode_step(made.path, small, profile, past=31)
    assert report.measured and report.value() > 0
    assert small.training is False  # the exporter left the model in eval mode


def FAST_PROFILE_PATH(folder):  # noqa: N802 - a path, spelt like the profile it holds
    path = folder / "host-fast.toml"
    path.write_text(FAST_PROFILE)
    return path


# ----------------------------------------------------------------------------- metrics


def test_token_scores_perfect_and_uniform():
    windows = torch.randint(0, 10, (4, 9))

    def perfect(x):  # knows the next token (it reads it from the window)
        nxt = windows[: len(x), 1:]
        return torch.nn.functional.one_hot(nxt, 10).float() * 50

    ce, acc, _ = token_scores(perfect, windows)
    assert acc == 1.0 and ce < 1e-6
    ce, acc, _ = token_scores(lambda x: torch.zeros(*x.shape, 10), windows)
    assert math.exp(ce) == pytest.approx(10.0)


def test_last_word_accuracy_counts_exact_words_only():
    tok = byte_tokenizer()
    passages = [Passage("the value of the ", "attribute"), Passage("call the ", "function")]
    target = tok("the value of the attribute", add_special_tokens=False)["input_ids"]

    def oracle(seq):  # emits the first passage's word, byte by byte, whatever it is shown
        nxt = target[min(seq.shape[1], len(target) - 1)] if seq.shape[1] < len(target) else 0
        logits = torch.zeros(1, seq.shape[1], len(tok))
        logits[0, -1, nxt] = 1.0
        return logits

    assert last_word_accuracy(oracle, tok, passages[:1], context=64) == 1.0
    assert last_word_accuracy(oracle, tok, passages, context=64) == 0.5
    assert last_word_accuracy(oracle, tok, [], context=64) is None


def test_last_word_passages_end_in_a_word():
    docs = ["x " * 40 + "The parser reads every token. Then more text follows here."]
    (p,) = last_word_passages(docs, n=5)
    assert p.word == "token" and p.context.endswith("every ")


# ----------------------------------------------------------------------------- the task seam


def test_task_for_picks_the_task_from_the_teacher(lm_files, tmp_path):
    assert isinstance(task_for(CompressConfig(teacher=str(lm_files["teacher"]))), CausalLM)
    assert isinstance(task_for(CompressConfig(teacher=str(tmp_path / "teacher.pt"))), ImageClassification)


def test_image_task_records_the_normalisation(digits8):
    serving = ImageClassification().serving(digits8)
    ops = [s["op"] for s in serving["preprocess"]["steps"]]
    assert "normalize" in ops and serving["classes"] == [str(i) for i in range(10)]
    record = ImageClassification().record()
    assert record["headline"] == "accuracy" and record["metrics"][0]["key"] == "accuracy"


def test_text_data_reads_files_and_folders(tmp_path):
    (tmp_path / "a.txt").write_text("First document.\n\nSecond one.")
    (tmp_path / "b.md").write_text("Third.")
    assert read_documents(str(tmp_path))[1] == ["First document.\n\nSecond one.", "Third."]
    assert read_documents(str(tmp_path / "a.txt"))[1] == ["First document.", "Second one."]


# ----------------------------------------------------------------------------- the whole run


def test_compress_a_gpt2_teacher_end_to_end(lm_files, tmp_path, capsys):
    out = tmp_path / "run"
    code = main(["--teacher", str(lm_files["teacher"]), "--data", str(lm_files["corpus"]), "--budget", "0.7x",
                 "--profile", str(lm_files["profile"]), "--steps", "4", "--batch-size", "4", "--out", str(out),
                 "--no-progress", "-q", "--json"])
    summary = json.loads(capsys.readouterr().out)
    assert code in (0, 3)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["task"]["name"] == "causal-lm" and manifest["task"]["headline"] == "next_token_accuracy"
    assert len(manifest["models"]) >= 3
    for m in manifest["models"]:
        assert m["parity_ok"], m.get("notes")
        assert set(m["metrics"]) >= {"perplexity", "next_token_accuracy", "last_word_accuracy"}
        assert m["accuracy"] == m["metrics"]["next_token_accuracy"]
        assert m["metrics"]["perplexity"] > 1
        assert m["decode"]["parity_ok"] and m["decode"]["latency"]  # one generated token, KV cache
        # every size is a real smaller transformers model, and its ONNX file serves any length
        small = transformers().GPT2LMHeadModel.from_pretrained(out / m["files"]["hf_config"].rsplit("/", 1)[0])
        assert small.config.n_layer == m["arch"]["layers"] and small.config.n_inner == m["arch"]["ffn"]
    shapes = [(m["arch"]["layers"], m["arch"]["heads"], m["arch"]["ffn"]) for m in manifest["models"]]
    assert shapes == sorted(shapes, reverse=True)  # nested: widest (the TA) first
    if code == 0:
        assert summary["selected"]["name"] == manifest["selected"]
        chosen = next(m for m in manifest["models"] if m["name"] == manifest["selected"])
        assert chosen["meets_budget"]
    from compressor.export import read_onnx_metadata

    meta = read_onnx_metadata(out / manifest["models"][0]["files"]["onnx"])
    assert "tokenize" in meta["preprocess"]
    report = (out / "report.md").read_text()
    assert "Perplexity" in report and "Last-word accuracy" in report


@pytest.mark.parametrize("case", ["image data", "no tokenizer", "not gpt2", "no config"])
def test_bad_language_model_input_is_one_line(lm_files, tmp_path, capsys, case):
    import shutil

    teacher = lm_files["teacher"]
    data = str(lm_files["corpus"])
    if case == "image data":
        data = "digits"
    else:
        teacher = tmp_path / "gpt"
        shutil.copytree(lm_files["teacher"], teacher)
        if case == "no tokenizer":
            for f in ("tokenizer_config.json", "special_tokens_map.json"):
                (teacher / f).unlink(missing_ok=True)
        elif case == "no config":
            (teacher / "config.json").unlink()
        else:
            cfg = json.loads((teacher / "config.json").read_text())
            cfg["model_type"] = "llama"
            (teacher / "config.json").write_text(json.dumps(cfg))
    code = main(["--teacher", str(teacher), "--data", data, "--budget", "0.5x", "--out", str(tmp_path / "run"),
                 "--no-progress"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert len(err) == 1 and err[0].startswith("compress: error:"), err


def test_example_lm_teacher_command_writes_a_model_folder(tmp_path, capsys):
    out, corpus = tmp_path / "gpt", tmp_path / "docs.txt"
    code = main(["example-lm-teacher", "--out", str(out), "--corpus", str(corpus), "--layers", "1", "--d-model", "16",
                 "--heads", "2", "--steps", "2"])
    assert code == 0, capsys.readouterr().err
    assert "validation perplexity" in capsys.readouterr().out
    assert "Python" in corpus.read_text()[:100000]  # the Python documentation's own text
    model = transformers().GPT2LMHeadModel.from_pretrained(out)
    tok = transformers().AutoTokenizer.from_pretrained(out)
    assert model.config.n_layer == 1 and len(tok) <= model.config.vocab_size
