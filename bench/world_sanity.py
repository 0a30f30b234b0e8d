"""World sanity (scratch form): train a PRM on a fully labelled world pool, ProcessBench F1 on the eval set.

    python -m bench.world_sanity N MODEL "dict(TrainConfig overrides)"
    MODEL: default (the shipped PRM) | random (a random-init PRM of the same shape) | a checkpoint dir

Labels are the world's true first_error_step (a verifier with wrong_rate 0); 600 eval rows (seed 2).
Prints F1 before and after one round. To be replaced by the CLI chain generate -> annotate -> train
-> evaluate once the round reaches the target (BENCHMARKS.md, "World sanity").
"""
import sys
import time

import numpy as np
import torch

from actprm.config import TrainConfig
from actprm.scoring import TrajectoryEncoder, score_trajectories
from actprm.train import LabelCounts, build_examples, load_checkpoint, train_round
from actprm.world.arith import Generator

torch.set_num_threads(2)
N=int(sys.argv[1]); model_path=sys.argv[2] if sys.argv[2]!='default' else None
kw=eval(sys.argv[3]) if len(sys.argv)>3 else {}
g=Generator(seed=1)
import os
split=os.environ.get('POOL_SPLIT','train')  # eval: a balanced pool (half with an error)
rows=[dict(r, label_first_error=r['first_error_step'], step_labels=None, label_weight=1.0) for r in g.rows(0,N,split)]
ev=list(Generator(seed=2).rows(0,600,'eval'))
def f1(model,tok):
    res=score_trajectories(model,tok,[r['problem'] for r in ev],[r['steps'] for r in ev])
    pe=[];pc=[]
    for r,x in zip(ev,res):
        m=x.mean; below=np.nonzero(m<0.5)[0]; pred=int(below[0]) if len(below) else -1
        (pe if r['first_error_step']>=0 else pc).append(pred==r['first_error_step'])
    a,b=np.mean(pe),np.mean(pc); return round(a,3),round(b,3),round(2*a*b/(a+b+1e-9),3)
dev=torch.device('cpu')
if model_path=='random':
    from actprm.model import init_model
    model,tok=init_model('world'); anchor={k:v.clone() for k,v in model.heads.state_dict().items()}
else:
    model,tok,anchor,_,_=load_checkpoint(model_path,dev)
print('before',f1(model,tok),flush=True)
cfg=TrainConfig(**kw)
c=LabelCounts(); ex=build_examples(rows,TrajectoryEncoder(tok,max_length=model.max_length),c)
t=time.time()
res,_=train_round(model,tok,ex,cfg,device=dev,anchor=anchor,on_step=lambda s,l: print(s,round(l,3),flush=True) if s%50==0 else None)
print('train s',time.time()-t,res.steps, res.first_loss,res.last_loss)
print('after',f1(model,tok),flush=True)
