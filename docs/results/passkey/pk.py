import sys, time, math, json, argparse
import torch
from infini_attention.pretrained import load_pretrained, save_pretrained
from infini_attention.data.passkey_task import PasskeySampler, retrieved, answer_span
from infini_attention.train.schedule import build_optimizer, Schedule
from infini_attention.train.config import OptimConfig
p = argparse.ArgumentParser()
p.add_argument("--init", default="default"); p.add_argument("--steps", type=int, default=300)
p.add_argument("--bs", type=int, default=8); p.add_argument("--min-len", type=int, default=512)
p.add_argument("--max-len", type=int, default=2048); p.add_argument("--lr", type=float, default=1e-3)
p.add_argument("--gate-lr", type=float, default=1e-2); p.add_argument("--out", default="/tmp/exp/pk1")
p.add_argument("--update", default=None); p.add_argument("--eval-len", type=int, default=4096)
p.add_argument("--warmup", type=int, default=20); p.add_argument("--copy", type=int, default=0); p.add_argument("--words", type=float, default=0.0); p.add_argument("--copy-every", type=int, default=0); p.add_argument("--copy-len", type=int, default=384); p.add_argument("--pmin", type=int, default=16); p.add_argument("--pmax", type=int, default=192); p.add_argument("--N", type=int, default=0); p.add_argument("--threads", type=int, default=2)
a = p.parse_args()
torch.set_num_threads(a.threads)
torch.manual_seed(0)
model, tok = load_pretrained(a.init, dtype=torch.float32)
if a.update:
    model.config.update = a.update
    for blk in model.blocks: blk.attn.update = a.update
if a.N: model.config.segment_len = a.N
N = model.config.segment_len
opt = build_optimizer(model, OptimConfig(lr=a.lr, gate_lr=a.gate_lr, warmup_steps=a.warmup, weight_decay=0.0))
sched = Schedule(opt, OptimConfig(lr=a.lr, gate_lr=a.gate_lr, warmup_steps=a.warmup), a.steps)
S = PasskeySampler(tok, a.max_len, N, a.bs, seed=1, min_len=a.min_len, copy_targets=a.copy, word_keys=a.words)
E = PasskeySampler(tok, a.eval_len, N, 16, seed=999, min_len=a.eval_len)
print('N', N, flush=True)
def answer_span_only(b):
    real = (~b.pad_mask).sum(1); first = int((b.input_ids.shape[1] - real).min())
    return first + 8
def evaluate():
    model.eval(); hits = 0; n = 0
    with torch.no_grad():
        for _ in range(2):
            b = E.next_batch(); k = answer_span(b.labels)
            out = model(b.input_ids, None, b.labels, pad_mask=b.pad_mask, logits_to_keep=k)
            hits += int(retrieved(out.logits, b.labels).sum()); n += b.input_ids.shape[0]
    E.step = 0; model.train(); return hits / n
import random as _r
from infini_attention.data.passkey_task import _words
WID = sorted({tok.encode(w)[0] for w in _words(tok) if len(tok.encode(w)) == 1})
print('copy vocab', len(WID), flush=True)
crng = _r.Random(5)
def copy_batch(B, L):
    ids = torch.zeros(B, L, dtype=torch.long); lab = torch.full((B, L), -100)
    for r in range(B):
        P = crng.randint(a.pmin, a.pmax)
        seq = torch.tensor([crng.choice(WID) for _ in range(P)])
        row = seq.repeat(L // P + 1)[:L]
        ids[r] = row; lab[r, P - 1 : L - 1] = row[P:]
    return ids, lab
copy_w = []
t0 = time.time(); acc_w = []; loss_w = []; cacc = [0.0]
for step in range(a.steps):
    sched.apply(step)
    if a.copy_every and step % a.copy_every == 0:
        ids, lab = copy_batch(a.bs, a.copy_len)
        out = model(ids, None, lab)
        opt.zero_grad(); out.loss.backward(); torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0); opt.step()
        copy_w.append(out.loss.item())
        continue
    b = S.next_batch(); k = 0 if a.copy else answer_span(b.labels)
    out = model(b.input_ids, None, b.labels, pad_mask=b.pad_mask, logits_to_keep=k)
    if a.copy:  # accuracy on the answer only: the last contiguous run of labels in each row
        lab = b.labels.clone()
        for r in range(lab.shape[0]):
            idx = (lab[r] != -100).nonzero().flatten()
            gaps = (idx[1:] - idx[:-1] > 1).nonzero().flatten()
            if len(gaps): lab[r, : idx[gaps[-1] + 1]] = -100
        copy_lab = b.labels.clone(); copy_lab[lab != -100] = -100
        cacc.append(float(retrieved(out.logits.detach(), copy_lab).float().mean()))
        b.labels = lab
    opt.zero_grad(); out.loss.backward(); torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0); opt.step()
    acc_w.append(float(retrieved(out.logits.detach(), b.labels).float().mean())); loss_w.append(out.loss.item())
    if (step + 1) % 10 == 0 and acc_w:
        g = torch.sigmoid(torch.stack([p.detach() for p in model.gates()])).flatten()
        print(f"copyloss {sum(copy_w)/max(1,len(copy_w)):.3f}", end=" "); copy_w = []
        print(f"step {step+1} loss {sum(loss_w)/len(loss_w):.3f} acc {sum(acc_w)/len(acc_w):.2f} copy {sum(cacc)/len(cacc):.2f} L {b.input_ids.shape[1]} gates {g.min():.2f}..{g.max():.2f} t {time.time()-t0:.0f}s", flush=True)
        acc_w, loss_w, cacc = [], [], [0.0]
    if (step + 1) % 50 == 0:
        print(f"  eval@{a.eval_len}: {evaluate():.2f}", flush=True)
        save_pretrained(model, tok, a.out)
save_pretrained(model, tok, a.out)
