"""Row-block merging (an elementwise method merged block by block equals the whole-tensor merge),
and the pieces that make it fast: merge threads, direct-I/O shard files, finiteness checks.

The engine cuts tensors into row blocks of ``BLOCK_BYTES``; here the blocks are made tiny
(a few rows) so every tensor of the tiny triplet spans many of them, including the
embedding with extra vocabulary rows in ΘT and 1-D tensors.
"""

from __future__ import annotations

import dataclasses
import json
import platform
import shutil
import sys

import pytest
import torch
from safetensors.torch import load_file, save_file

from mergekit_ir.errors import CheckpointError
from mergekit_ir.merging import engine
from mergekit_ir.merging.allocator import keep_freed_buffers
from mergekit_ir.merging.checkpoint import open_checkpoint
from mergekit_ir.merging.engine import MergeJob, merge_to_folder, row_blocks
from mergekit_ir.merging.finite import all_finite
from mergekit_ir.merging.quantized_store import QuantSpec, save_quantized
from mergekit_ir.merging.safetensors_writer import ShardedWriter, ShardFile, TensorSpec
from mergekit_ir.merging.task_vector import TaskVector
from mergekit_ir.plugin_host import catalog

EMB = "bert.embeddings.word_embeddings.weight"


def test_row_blocks_cover_the_tensor_and_cut_at_the_vocabulary_boundary(monkeypatch):
    monkeypatch.setattr(engine, "BLOCK_BYTES", 3 * 8 * 4)  # three rows of 8 fp32 values
    assert row_blocks((7, 8)) == [(0, 3), (3, 6), (6, 7)]
    assert row_blocks((7, 8), split_at=5) == [(0, 3), (3, 5), (5, 6), (6, 7)]
    assert row_blocks((0, 8)) == [(0, 0)]
    assert row_blocks(()) == [None]
    assert row_blocks((100,)) == [(0, 24), (24, 48), (48, 72), (72, 96), (96, 100)]
    monkeypatch.setattr(engine, "BLOCK_BYTES", 4)  # one row is more than a block: one row each
    assert row_blocks((2, 8)) == [(0, 1), (1, 2)]


def _with_extra_vocab(t, tmp_path):
    big = tmp_path / "big"
    shutil.copytree(t["ir"], big)
    sd = load_file(big / "model.safetensors")
    sd[EMB] = torch.cat([sd[EMB], torch.randn(3, sd[EMB].shape[1])])
    save_file(sd, big / "model.safetensors", metadata={"format": "pt"})
    cfg = json.loads((big / "config.json").read_text())
    cfg["vocab_size"] += 3
    (big / "config.json").write_text(json.dumps(cfg))
    return big


@pytest.mark.parametrize("vector", ["checkpoints", "4-bit", "3-bit"])
def test_block_merge_equals_whole_tensor_merge_bit_for_bit(
    tiny_triplet, tmp_path, monkeypatch, vector
):
    t = tiny_triplet
    pre = open_checkpoint(str(t["pretrained"]))
    tau = TaskVector.from_checkpoints(pre, open_checkpoint(str(t["domain"])))
    if vector != "checkpoints":
        bits = int(vector[0])
        tau = TaskVector.load(save_quantized(tau, tmp_path / "q", QuantSpec(bits, group_size=5)))
    ir = open_checkpoint(str(_with_extra_vocab(t, tmp_path)))
    blockwise = catalog().merge_method("task_arithmetic")
    assert blockwise.elementwise
    whole = dataclasses.replace(blockwise, elementwise=False)
    params = {"alpha": 0.7, "weights": None}
    merge_to_folder(MergeJob(ir, [tau], whole, params), tmp_path / "whole", progress=False)
    monkeypatch.setattr(engine, "BLOCK_BYTES", 3 * 4 * 32)  # 3 rows of 32 values: many blocks
    for overlap, workers in ((False, 1), (True, 1), (True, 3)):  # 3 merge threads, out of order
        out = tmp_path / f"blocks-{overlap}-{workers}"
        job = MergeJob(ir, [tau], blockwise, params)
        merge_to_folder(job, out, progress=False, overlap=overlap, workers=workers)
        a = load_file(tmp_path / "whole" / "model.safetensors")
        b = load_file(out / "model.safetensors")
        assert a.keys() == b.keys()
        for name in a:
            assert torch.equal(a[name], b[name]), name
    assert b[EMB].shape[0] == pre.info(EMB).shape[0] + 3


def test_row_reads_equal_slices_of_the_whole_tensor(tiny_triplet, tmp_path):
    src = open_checkpoint(str(tiny_triplet["ir"]))
    for name in src.names():
        whole = src.get(name)
        if whole.dim() == 0:
            continue
        n = whole.shape[0]
        for rows in ((0, n), (1, min(3, n)), (n - 1, n), (n, n)):
            assert torch.equal(src.get(name, rows), whole[rows[0] : rows[1]]), (name, rows)
    with pytest.raises(CheckpointError, match=r"elements \[.*\) requested"):
        src.get(EMB, (0, src.info(EMB).shape[0] + 1))


@pytest.mark.parametrize("bits", [8, 4, 3, 2])
def test_quantized_rows_equal_rows_of_the_dequantized_tensor(tmp_path, bits):
    """Rows start at arbitrary code offsets (3-bit codes straddle bytes) and odd groups."""
    gen = torch.Generator().manual_seed(0)
    tensors = {
        "a.weight": torch.randn(37, 45, generator=gen),
        "b.weight": torch.randn(5, 7, 33, generator=gen),
        "c.bias": torch.randn(50, generator=gen),
    }
    path = tmp_path / "tau"
    TaskVector([(1.0, _Dict(tensors))]).save(path)
    q = save_quantized(TaskVector.load(path), tmp_path / "q", QuantSpec(bits, 16, None, 10))
    tau = TaskVector.load(q)
    for key in tensors:
        whole = tau.get(key)
        n = whole.shape[0]
        for rows in ((0, n), (1, 3), (3, n), (n - 1, n), (2, 2)):
            assert torch.equal(tau.get(key, rows), whole[rows[0] : rows[1]]), (key, rows)


def test_lora_rows_equal_rows_of_the_whole_delta(tmp_path):
    from peft import LoraConfig, get_peft_model
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    cfg = BertConfig(
        vocab_size=40, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
        intermediate_size=32,
    )  # fmt: skip
    model = get_peft_model(
        BertModel(cfg),
        LoraConfig(r=2, target_modules=["query", "word_embeddings"], init_lora_weights=False),
    )
    model.save_pretrained(tmp_path / "lora")
    tau = TaskVector.from_lora(tmp_path / "lora")
    assert len(tau.keys()) == 2
    for key in tau.keys():
        whole = tau.get(key)
        for rows in ((0, 5), (3, whole.shape[0])):
            torch.testing.assert_close(tau.get(key, rows), whole[rows[0] : rows[1]])


def test_writer_takes_a_tensor_in_row_blocks_and_refuses_overflow(tmp_path):
    x = torch.arange(12, dtype=torch.float32).reshape(4, 3)
    with ShardedWriter(
        tmp_path, [TensorSpec("x", (4, 3), torch.float32)], 2**30, durable=True
    ) as w:
        w.write_rows("x", x[:1])
        w.write_rows("x", x[1:4])
    assert torch.equal(load_file(tmp_path / "model.safetensors")["x"], x)
    w = ShardedWriter(tmp_path / "y", [TensorSpec("x", (4, 3), torch.float32)], 2**30)
    (tmp_path / "y").mkdir()
    with pytest.raises(CheckpointError, match="more values written than its shape holds"), w:
        w.write_rows("x", torch.zeros(5, 3))
    with pytest.raises(CheckpointError, match="do not fit"):
        ShardedWriter(tmp_path / "y", [TensorSpec("x", (4, 3), torch.float32)], 2**30).write_rows(
            "x", torch.zeros(1, 4)
        )


class _Dict:
    """A term over in-memory tensors (a task vector without checkpoints)."""

    dense = True

    def __init__(self, tensors: dict[str, torch.Tensor]):
        self.tensors = tensors

    def keys(self) -> list[str]:
        return list(self.tensors)

    def shape(self, key: str):
        return tuple(self.tensors[key].shape) if key in self.tensors else None

    def get(self, key: str, rows=None):
        t = self.tensors.get(key)
        return None if t is None else (t if rows is None else t[rows[0] : rows[1]]).clone()

    def describe(self) -> str:
        return "in-memory"


def test_an_error_in_a_merge_thread_stops_the_merge_and_leaves_no_output(
    tiny_triplet, tmp_path, monkeypatch
):
    t = tiny_triplet
    pre, ir = open_checkpoint(str(t["pretrained"])), open_checkpoint(str(t["ir"]))
    tau = TaskVector.from_checkpoints(pre, open_checkpoint(str(t["domain"])))
    bad = {k: torch.zeros(tau.shape(k)) for k in tau.keys()}
    emb = next(k for k in bad if k.endswith("word_embeddings.weight"))
    bad[emb][-1, 0] = float("nan")  # in the last block of the embedding, not the first
    monkeypatch.setattr(engine, "BLOCK_BYTES", 3 * 4 * 32)
    method = catalog().merge_method("task_arithmetic")
    job = MergeJob(ir, [TaskVector([(1.0, _Dict(bad))])], method, {"alpha": 1.0, "weights": None})
    with pytest.raises(CheckpointError, match="word_embeddings.weight: task vector τ1 .* NaN/Inf"):
        merge_to_folder(job, tmp_path / "out", progress=False, workers=2)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("direct", [True, False])
def test_shard_file_writes_the_exact_bytes_direct_or_buffered(tmp_path, direct):
    data = torch.randint(0, 256, (3 * ShardFile.STAGE // 2 + 12345,), dtype=torch.uint8).numpy()
    f = ShardFile(tmp_path / "x.bin", direct=direct)
    for start in range(0, len(data), 1_000_003):  # pieces that straddle the stage's end
        f.write(memoryview(data[start : start + 1_000_003]))
    f.close()
    assert (tmp_path / "x.bin").read_bytes() == data.tobytes()  # the padding is cut off


class _UnalignedTail(ShardFile):
    ALIGN = 1  # the tail is written unpadded: O_DIRECT refuses it with EINVAL


def test_shard_file_goes_on_buffered_when_a_direct_write_is_refused(tmp_path):
    data = torch.randint(0, 256, (ShardFile.STAGE + 777,), dtype=torch.uint8).numpy()
    f = _UnalignedTail(tmp_path / "x.bin")  # on ext4/XFS the unpadded tail is refused
    f.write(memoryview(data))
    f.close()  # (file systems that take unaligned direct writes never fall back: same bytes)
    assert (tmp_path / "x.bin").read_bytes() == data.tobytes()


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
def test_all_finite_sees_every_nan_and_inf_and_passes_large_finite_blocks(dtype):
    big = torch.full((100_000,), 60000.0 if dtype == torch.float16 else 1e30, dtype=dtype)
    assert all_finite(big)  # its sum overflows fp16: still finite values
    for bad in (float("nan"), float("inf"), -float("inf")):
        t = big.clone()
        t[12345] = bad
        assert not all_finite(t)
    assert all_finite(torch.arange(5))  # integer buffers are never checked


def test_merge_process_keeps_freed_block_buffers_on_glibc():
    expected = sys.platform.startswith("linux") and platform.libc_ver()[0] == "glibc"
    assert keep_freed_buffers() is expected
