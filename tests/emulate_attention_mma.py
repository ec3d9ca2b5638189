"""Emulates kernels/attention_prefill_mma.cu lane by lane on the CPU and compares it with a
float64 reference: every register a lane loads, packs or writes is indexed exactly as in the
kernel, and each mma.m16n8k16 (.row.col, bf16 in, f32 accumulate) is assembled from the 32
lanes' fragments by the PTX ISA's layout (g = lane / 4, t = lane % 4):
  A: a0 (g, 2t..2t+1)  a1 (g+8, 2t..)  a2 (g, 2t+8..)  a3 (g+8, 2t+8..);  B: b0 (k 2t.., n g)  b1 (k 2t+8.., n g);
  C: c0, c1 (g, 2t..2t+1)  c2, c3 (g+8, 2t..2t+1).
So a wrong fragment index, mask, rescale or quad reduction in the kernel shows up here, on a
machine without a GPU; the layout itself is checked only by `flint selftest` on a GPU.
Run: python3 tests/emulate_attention_mma.py (numpy); tests/attention_mma_emulation.rs runs it.
It models one warp's 16 rows (the kernel's single-warp hd-256 tiles; at hd <= 128 each of the
four warps of a 64-row tile runs the same per-warp code). The kernel source itself, 4-warp
tiles included, runs on the host in tests/attention_emulation.
It models the fragments' contents, not how they are loaded: the kernel's Q fragments held in
registers, cp.async double buffering and ldmatrix(.trans) loads (branch attnpipe) fill the
same registers with the same values, so this model still applies unchanged.
"""
import numpy as np
rng = np.random.default_rng(0)
def bf(x):  # round to bf16 (nearest even), keep as float32
    x = np.asarray(x, np.float32).copy(); u = x.view(np.uint32)
    u[:] = ((u + 0x7FFF + ((u >> 16) & 1)) >> 16) << 16; return x
LANES = 32
def mma(d, a, b):
    # d[lane][4], a[lane][4] (pairs), b[lane][2] (pairs) -> D += A B
    A = np.zeros((16,16)); B = np.zeros((16,8))
    for l in range(LANES):
        g, t = l//4, l%4
        for (r, c0), reg in zip([(g,2*t),(g+8,2*t),(g,2*t+8),(g+8,2*t+8)], a[l]):
            A[r,c0], A[r,c0+1] = reg
        for (k0, n), reg in zip([(2*t,g),(2*t+8,g)], b[l]):
            B[k0,n], B[k0+1,n] = reg
    C = A @ B
    for l in range(LANES):
        g, t = l//4, l%4
        d[l][0] += C[g,2*t]; d[l][1] += C[g,2*t+1]; d[l][2] += C[g+8,2*t]; d[l][3] += C[g+8,2*t+1]

def kernel_tile(q, kc, vc, bt, bs, q_start, q_len, ctx, row0, kvh, H, KV, D, scale, softcap, window, out):
    group = H // KV; rows = q_len*group; first = ctx - q_len
    qs = np.zeros((16, D), np.float32)
    for r in range(16):
        row = row0 + r
        if row < rows:
            i, h = row//group, kvh*group + row%group
            qs[r] = q[q_start+i, h]
    last_row = min(rows, row0+16)-1
    p_min = first + row0//group; p_max = first + last_row//group
    kv_lo = max(0, p_min-window+1) if window > 0 else 0; kv_hi = p_max+1
    st = [dict() for _ in range(LANES)]
    for l in range(LANES):
        g = l//4; s = st[l]
        s['pos'] = [first + (row0+g+8*hf)//group if row0+g+8*hf < rows else -1 for hf in (0,1)]
        s['lo'] = [p - window + 1 if window > 0 else 0 for p in s['pos']]
        s['m'] = [-np.inf, -np.inf]; s['l'] = [0.0, 0.0]; s['o'] = np.zeros((D//8, 4))
    for kv0 in range(kv_lo, kv_hi, 32):
        ks = np.zeros((32, D), np.float32); vs = np.zeros((32, D), np.float32)
        for j in range(32):
            key = kv0 + j
            if key < kv_hi:
                slot = bt[key//bs]*bs + key%bs
                ks[j] = kc[slot, kvh]; vs[j] = vc[slot, kvh]
        S = [np.zeros((4,4)) for _ in range(LANES)]
        for kk in range(D//16):
            a = []; bsj = [[] for _ in range(4)]
            for l in range(LANES):
                g, t = l//4, l%4; k0 = kk*16 + 2*t
                a.append([qs[g,k0:k0+2], qs[g+8,k0:k0+2], qs[g,k0+8:k0+10], qs[g+8,k0+8:k0+10]])
                for j in range(4):
                    bsj[j].append([ks[8*j+g, k0:k0+2], ks[8*j+g, k0+8:k0+10]])
            for j in range(4):
                dj = [S[l][j] for l in range(LANES)]
                mma(dj, a, bsj[j])
        # softmax
        rmax = [[-np.inf,-np.inf] for _ in range(LANES)]
        for l in range(LANES):
            g, t = l//4, l%4
            for j in range(4):
                for c in range(4):
                    hf = c//2; key = kv0 + 8*j + 2*t + (c&1)
                    x = S[l][j][c]*scale
                    if softcap > 0: x = softcap*np.tanh(x/softcap)
                    vis = key < kv_hi and key <= st[l]['pos'][hf] and key >= st[l]['lo'][hf]
                    S[l][j][c] = x if vis else -np.inf
                    rmax[l][hf] = max(rmax[l][hf], S[l][j][c])
        for l in range(LANES):
            quad = [4*(l//4)+i for i in range(4)]
            s = st[l]; s['corr'] = [0,0]; s['mu'] = [0,0]
            for hf in (0,1):
                mnew = max(s['m'][hf], max(rmax[x][hf] for x in quad))
                mu = 0.0 if mnew == -np.inf else mnew
                s['corr'][hf] = np.exp(s['m'][hf]-mu); s['mu'][hf] = mu; s['m'][hf] = mnew; s['l'][hf] *= s['corr'][hf]
        for l in range(LANES):
            s = st[l]
            for j in range(4):
                for c in range(4):
                    hf = c//2
                    pr = 0.0 if S[l][j][c] == -np.inf else np.exp(S[l][j][c]-s['mu'][hf])
                    S[l][j][c] = pr; s['l'][hf] += pr
            s['o'][:,0:2] *= s['corr'][0]; s['o'][:,2:4] *= s['corr'][1]
        for kk in range(2):
            a = []; bn = [[] for _ in range(D//8)]
            for l in range(LANES):
                g, t = l//4, l%4; Sl = S[l]
                a.append([bf(Sl[2*kk][0:2]), bf(Sl[2*kk][2:4]), bf(Sl[2*kk+1][0:2]), bf(Sl[2*kk+1][2:4])])
                base = 16*kk + 2*t
                for n in range(D//8):
                    col = 8*n + g
                    bn[n].append([[vs[base,col], vs[base+1,col]], [vs[base+8,col], vs[base+9,col]]])
            for n in range(D//8):
                dn = [st[l]['o'][n] for l in range(LANES)]
                mma(dn, a, bn[n])
    for l in range(LANES):
        g, t = l//4, l%4; quad = [4*g+i for i in range(4)]
        for hf in (0,1):
            lsum = sum(st[x]['l'][hf] for x in quad)
            row = row0 + g + 8*hf
            if row >= rows: continue
            tt, h = q_start + row//group, kvh*group + row%group
            inv = 1/lsum if lsum > 0 else 0
            for n in range(D//8):
                out[tt, h, 8*n+2*t] = st[l]['o'][n][2*hf]*inv
                out[tt, h, 8*n+2*t+1] = st[l]['o'][n][2*hf+1]*inv

def reference(q, kc, vc, seqs, bs, H, KV, D, scale, softcap, window):
    out = np.zeros_like(q, dtype=np.float64); group = H//KV
    for (q_start, q_len, ctx, bt) in seqs:
        keys = [bt[k//bs]*bs + k%bs for k in range(ctx)]
        K = kc[keys].astype(np.float64); V = vc[keys].astype(np.float64)
        for i in range(q_len):
            p = ctx - q_len + i
            for h in range(H):
                s = K[:, h//group] @ q[q_start+i, h] * scale
                if softcap > 0: s = softcap*np.tanh(s/softcap)
                lo = p - window + 1 if window > 0 else 0
                mask = np.array([(k <= p and k >= lo) for k in range(ctx)])
                s = np.where(mask, s, -np.inf); w = np.exp(s - s.max()); w /= w.sum()
                out[q_start+i, h] = w @ V[:, h//group]
    return out

def run(seq_specs, H, KV, D, softcap=0.0, window=0, bs=16):
    group = H//KV
    T = sum(q for q, c in seq_specs)
    nblocks = sum((c+bs-1)//bs for q, c in seq_specs)
    perm = rng.permutation(nblocks)
    q = bf(rng.standard_normal((T, H, D)))
    kc = bf(rng.standard_normal((nblocks*bs, KV, D))); vc = bf(rng.standard_normal((nblocks*bs, KV, D)))
    seqs = []; qs = 0; b = 0
    for q_len, ctx in seq_specs:
        nb = (ctx+bs-1)//bs; seqs.append((qs, q_len, ctx, perm[b:b+nb])); qs += q_len; b += nb
    out = np.full((T, H, D), np.nan)
    scale = 1/np.sqrt(D)
    for (q_start, q_len, ctx, bt) in seqs:
        for row0 in range(0, q_len*group, 16):
            for kvh in range(KV):
                kernel_tile(q, kc, vc, bt, bs, q_start, q_len, ctx, row0, kvh, H, KV, D, scale, softcap, window, out)
    ref = reference(q, kc, vc, seqs, bs, H, KV, D, scale, softcap, window)
    err = np.linalg.norm(out - ref)/np.linalg.norm(ref)
    print(seq_specs, H, KV, D, softcap, window, "rel_l2", err)
    assert err < 2e-2, err

run([(37, 37)], 8, 2, 64)
run([(5, 20), (1, 1), (9, 50)], 4, 4, 16 * 4, softcap=50.0, window=8)
run([(1, 100), (1, 17)], 8, 1, 128)
run([(40, 70)], 6, 2, 32, softcap=30.0, window=16)
run([(21, 30), (1, 9)], 4, 2, 16)  # head dim 16 (the tiny fixtures): one k16 step
run([(3, 3), (1, 40), (20, 33)], 8, 1, 256, window=300)  # MQA, head dim 256, q_len 1 in a ragged batch
print("ok")
