"""neo.kernels: lazy triton import, dispatch, band helpers, and compilation for a real GPU target."""
import os
import subprocess
import sys

import pytest
import torch

import neo.kernels as K


def test_import_does_not_load_triton():
    code = ("import sys, neo.kernels, neo.kernels.reference, neo.kernels.device_trie; "
            "import torch; x = torch.zeros(2, 40); "
            "neo.kernels.apply_token_bitmask_inplace(x, torch.zeros(2, 2, dtype=torch.int32)); "
            "neo.kernels.sample_masked(x, None); "
            "assert 'triton' not in sys.modules, 'triton imported'")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]


def test_kernels_do_not_import_neo():
    root = os.path.dirname(K.__file__)
    for name in os.listdir(root):
        if name.endswith(".py"):
            for line in open(os.path.join(root, name)):
                code = line.strip()
                assert not code.startswith(("import neo", "from neo")), (name, code)


def test_band_to_bitmask_and_constants():
    bs = torch.tensor([40, -1, 0])
    bm = torch.tensor([[0b11, 0], [5, 0], [0, -2**31]], dtype=torch.int32)
    full = K.band_to_bitmask(bs, bm, 100, extra_token=torch.tensor([-1, 7, 99]))
    from neo.kernels.reference import unpack_bitmask

    rows = [torch.nonzero(r).flatten().tolist() for r in unpack_bitmask(full, 100)]
    assert rows == [[40, 41], [7], [63, 99]]
    assert K.OUTSIDE == -1 and K.ERROR == -2
    from neo.kernels import reference

    assert reference.OUTSIDE == K.OUTSIDE and reference.ERROR == K.ERROR


def _compile(fn, signature, constexprs, num_warps=4):
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    src = ASTSource(fn, signature=signature, constexprs=constexprs)
    return triton.compile(src, target=GPUTarget("cuda", 90, 32), options={"num_warps": num_warps})


def test_kernels_compile_for_sm90():
    """Lower every kernel through the real (non-interpreter) compiler to a cubin for sm_90.

    Catches code the interpreter accepts but the compiler rejects (types of loop-carried values,
    scalar/vector mixes), without a GPU. Runs in a subprocess with the interpreter off."""
    pytest.importorskip("triton")
    try:
        from triton.backends.nvidia.compiler import CUDABackend  # noqa: F401
    except Exception as e:  # pragma: no cover
        pytest.skip(f"no NVIDIA backend in this triton: {e}")
    env = dict(os.environ, TRITON_INTERPRET="0", TRITON_DEFAULT_FP_FUSION="1")
    r = subprocess.run([sys.executable, __file__], capture_output=True, text=True, env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "compiled 6 kernels" in r.stdout


def _compile_all():
    from neo.kernels import beam, bitmask, sampling, trie

    i32 = "i32"
    k = _compile(bitmask._apply_bitmask_kernel, dict(
        logits_ptr="*bf16", bitmask_ptr="*i32", indices_ptr="*i32", ncols=i32, n_words=i32,
        logits_stride=i32, bitmask_stride=i32, HAS_INDICES="constexpr", BLOCK="constexpr"),
        dict(HAS_INDICES=True, BLOCK=4096), 8)
    assert "cubin" in k.asm
    k = _compile(bitmask._scatter_bands_kernel, dict(
        bitmask_ptr="*i32", band_ptr="*i64", bandmap_ptr="*i32", W=i32, NB=i32, bitmask_stride=i32,
        bandmap_stride=i32, NBP="constexpr"), dict(NBP=16), 1)
    assert "cubin" in k.asm
    k = _compile(sampling._sample_kernel, dict(
        logits_ptr="*fp16", bitmask_ptr="*i32", temp_ptr="*fp32", topk_ptr="*i64", topp_ptr="*fp32",
        seed_ptr="*i64", greedy_ptr="*i8", tok_out_ptr="*i64", lp_out_ptr="*fp32", V=i32,
        n_words=i32, logits_stride=i32, bitmask_stride=i32, HAS_MASK="constexpr",
        BLOCK="constexpr"), dict(HAS_MASK=True, BLOCK=2048), 8)
    assert "cubin" in k.asm
    k = _compile(beam._lse_partial_kernel, dict(
        logits_ptr="*fp32", m_ptr="*fp32", s_ptr="*fp32", V=i32, logits_stride=i32, chunk=i32,
        NSPLIT=i32, BLOCK="constexpr"), dict(BLOCK=2048), 8)
    assert "cubin" in k.asm
    k = _compile(beam._beam_topk_kernel, dict(
        logits_ptr="*bf16", m_ptr="*fp32", s_ptr="*fp32", beam_ptr="*fp32", band_ptr="*i64",
        bitmap_ptr="*i32", out_score_ptr="*fp32", out_beam_ptr="*i64", out_tok_ptr="*i64", V=i32,
        logits_stride=i32, bitmap_stride=i32, n_words=i32, NSPLIT=i32, num_beams=i32, k=i32,
        NB="constexpr", NSP="constexpr", KW="constexpr"), dict(NB=4, NSP=8, KW=256))
    assert "cubin" in k.asm
    sig = dict(node_ptr="*i64", tok_ptr="*i64", depth_begin_ptr="*i64", child_begin_ptr="*i32",
               code_ptr="*i32", leaf_lo_ptr="*i32", leaf_hi_ptr="*i32", leaf_item_ptr="*i32",
               band_start_ptr="*i32", band_size_ptr="*i32", excl_ptr="*i32", excl_stride=i32, E=i32,
               allow_ptr="*i32", allow_stride=i32, A=i32, alen_ptr="*i32", out_node_ptr="*i64",
               out_band_ptr="*i32", out_bitmap_ptr="*i32", out_leaf_ptr="*i8", out_item_ptr="*i32",
               out_nallowed_ptr="*i32", L=i32, open_id=i32, close_id=i32, NW=i32, LP="constexpr",
               KP="constexpr", NWP="constexpr", LOG_E="constexpr", LOG_A="constexpr",
               HAS_EXCL="constexpr", HAS_ALLOW="constexpr")
    k = _compile(trie._trie_step_kernel, sig, dict(LP=4, KP=256, NWP=8, LOG_E=7, LOG_A=5,
                                                   HAS_EXCL=True, HAS_ALLOW=True))
    assert "cubin" in k.asm
    print("compiled 6 kernels")


if __name__ == "__main__":
    _compile_all()
