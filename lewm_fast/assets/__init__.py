"""Package data: a small trained Two-Room LeWM (``two_room/``: checkpoint folder + ``latent_pca.json`` +
``model_card.json``, made by ``bench/train_default_model.sh``), the default model of ``lewm-fast web``, with its
GC-IDM (``two_room/idm/idm.pt``, weights only, made by ``bench/train_default_idm.sh``): ``lewm-eval planner=idm`` and
the page's policy mode use it without ``idm=``.

``LeWM.from_pretrained(DEFAULT_MODEL)`` loads it; ``lewm-eval checkpoint=<DEFAULT_MODEL> dataset=<file>`` evaluates it.
"""

from pathlib import Path

DEFAULT_MODEL = Path(__file__).resolve().parent / "two_room"

__all__ = ["DEFAULT_MODEL"]
