import torch, time, random, sys
from infini_attention import InfiniTransformer, ModelConfig
torch.manual_seed(0); torch.set_num_threads(2)
V=int(__import__("os").environ.get("V","1024")); L=int(sys.argv[1]); N=int(sys.argv[2]); pmin,pmax=int(sys.argv[3]),int(sys.argv[4]); steps=int(sys.argv[5]); lr=float(sys.argv[6])
cfg=ModelConfig(vocab_size=V,d_model=128,n_layers=int(__import__("os").environ.get("NL","2")),n_heads=4,segment_len=N,update="delta")
m=InfiniTransformer(cfg)
opt=torch.optim.AdamW(m.parameters(),lr=lr,weight_decay=0.0)
rng=random.Random(0)
def batch(B):
    ids=torch.zeros(B,L,dtype=torch.long); lab=torch.full((B,L),-100)
    for r in range(B):
        P=rng.randint(pmin,pmax); seq=torch.randint(1,V,(P,)); row=seq.repeat(L//P+1)[:L]
        ids[r]=row; lab[r,P-1:L-1]=row[P:]
    return ids,lab
t0=time.time()
for s in range(steps):
    ids,lab=batch(int(sys.argv[7]) if len(sys.argv)>7 else 32); out=m(ids,None,lab); opt.zero_grad(); out.loss.backward(); opt.step()
    if s%25==0: print(s, round(out.loss.item(),3), round(time.time()-t0), flush=True)
