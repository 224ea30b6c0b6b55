import re, sys
from collections import Counter
from urlvr_jax import sft
from urlvr_jax.data import synthetic as syn
from urlvr_jax.models.weights import load_model
from urlvr_jax.tokenizer import load_tokenizer
f=sys.argv[1]
m, tok = load_model(f), load_tokenizer(f)
ps = sft.problems_for_model(f, 128, 20260308, split="eval")
texts, cert, tr = sft.sample_responses(m, tok, ps, 4, 1.0, max_new_tokens=96)
LINE=re.compile(r"^(\d+)([-+*])(\d+)=(\d+)(?: so (.+))?$")
err=Counter(); tot=Counter()
for p,row in zip(ps,texts):
  for t in row:
    for ln in t.split("\n"):
      mm=LINE.match(ln)
      if not mm: continue
      a,op,b,c,rest=mm.groups(); a,b,c=int(a),int(b),int(c)
      right={"+":a+b,"-":a-b,"*":a*b}[op]
      kind = op if op=="*" else (op+str(len(str(a)))+str(len(str(b))))
      tot[kind]+=1
      if c!=right and not (op=="*" and c==syn.FACT_ERRORS.get(syn.fact_key(a,b))): err[kind]+=1
print({k:(err[k],tot[k],round(err[k]/tot[k],3)) for k in tot})
for p,row in list(zip(ps,texts))[:6]:
  print(p.problem, p.answer, [t.replace("\n"," | ") for t in row[:2]])
