"""Fine-tune BERT on a GLUE task.

    python -m lmtransfer.main --config configs/glue.py:task=mrpc,model=minilm,recipe=bert_paper \
        --config.data.dir=/path/to/glue_data --workdir runs/mrpc

Args (`:k=v,...`):
  task    cola, sst2, mrpc, stsb, qqp, mnli, qnli, rte, wnli
  model   minilm (the packaged MiniLM), tiny (2-layer random BERT, smoke tests), or an HF dir
  recipe  seed:       3 epochs, batch 16, eval batch 64, 500 warmup steps, wd 0.01, lr 5e-5
                      (the HF Trainer defaults the seed's examples use)
          bert_paper: batch 32, 3 epochs, lr in {5e-5, 4e-5, 3e-5, 2e-5} (`lr=`), 10% warmup,
                      weight decay 0.01 (Devlin et al. 2019, Sec. 4 / App. A.3)
  lr      the learning rate (recipe default: seed 5e-5, bert_paper 2e-5)
  source  glue (local GLUE root in --config.data.dir) or tfds (glue/<task> via tfds.data_source)
"""

from lmtransfer import config as config_lib
from lmtransfer.recipes import apply_model, apply_recipe


def get_config(arg=None):
    a = config_lib.parse_arg(arg, task="mrpc", model="minilm", recipe="bert_paper", lr=0.0,
                             source="glue")
    c = config_lib.finetune_config()
    c.task = "classification"
    c.data.source = a.source
    c.data.glue_task = a.task
    apply_model(c, a.model)
    apply_recipe(c, a.recipe, a.lr)
    c.train.export_hf = False
    return c
