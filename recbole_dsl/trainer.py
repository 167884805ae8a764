"""The trainer side: RecBole's trainer for the model (Trainer, NCLTrainer, ...) with the plugin's fixes.

Only the smallest hooks are overridden, each calling RecBole's own code:
- checkpoints load on torch >= 2.6 (evaluate(load_best_model=True) and resume_checkpoint), through the
  allow-listed loader (recbole_dsl.checkpoint; `trust_checkpoint` opts out), and are written atomically;
- a NaN or infinite loss stops training with TrainingDiverged naming the loss, its temperatures, the
  epoch and the batch (RecBole's check catches NaN only and names nothing);
- Ctrl+C during fit() saves the state reached to <checkpoint>-interrupted.pth, from which
  resume_checkpoint() continues (the interrupted epoch is trained again from that state);
- checkpoint names are unique per trainer, so parallel runs sharing a folder never collide;
- the user-grouped batching mode (BSL's bilateral positives) wraps the training loader;
- the loss's per-batch diagnostics (every 4th batch) are averaged per epoch and logged like RecBole's figures
  (TensorBoard, and W&B where `log_wandb` is on, where a tuple loss is also logged as scalars).
"""
from __future__ import annotations

import functools
import os
import uuid
from collections import defaultdict

import torch
from recbole.trainer import RecVAETrainer, Trainer
from recbole.utils import WandbLogger, get_trainer as recbole_get_trainer, set_color

from recbole_dsl.checkpoint import load_checkpoint, save_checkpoint
from recbole_dsl.compat import cpu_ddp, tune_cpu_malloc
from recbole_dsl.errors import TrainingDiverged
from recbole_dsl.losses import LOSSES
from recbole_dsl.optim import LazyAdam
from recbole_dsl.protocols.collector import Collector
from recbole_dsl.data import UserGroupedTrainDataLoader
from recbole_dsl.settings import plugin_settings


# The loss's diagnostics are averaged over every this-many-th training batch of an epoch.
DIAGNOSTICS_EVERY = 4


class RecLossWandbLogger(WandbLogger):
    """RecBole's W&B logger; with rec_loss set, a tuple training loss (e.g. LightGCN's
    recommendation term and its L2 term) is logged as `train_loss` (the sum, as in RecBole's
    train_loss_dict) plus `train_loss1`, `train_loss2`, ... (numbered as in the console log),
    instead of one list-valued entry W&B cannot chart."""

    def log_metrics(self, metrics, head="train", commit=True):
        loss = metrics.get("train_loss")
        if self.config["rec_loss"] is not None and isinstance(loss, tuple):
            metrics = dict(metrics, train_loss=sum(loss), **{f"train_loss{i}": v for i, v in enumerate(loss, 1)})
        return super().log_metrics(metrics, head=head, commit=commit)


class RecLossTrainer(Trainer):
    # The file the latest interrupted fit() of this process saved (for the command line's message).
    last_interrupted_checkpoint = None

    def __init__(self, config, model):
        with cpu_ddp(config):
            super().__init__(config, model)
        # RecBole's collector crashes with its own popularity metrics (ItemCoverage, ...) and lacks
        # the per-group counts of PopGroupNDCG / PopGroupRecall (recbole_dsl/protocols/collector.py).
        self.eval_collector = Collector(config)
        if config["log_wandb"]:
            # The run RecBole's logger started is reused (wandb.init runs once per process).
            self.wandblogger = RecLossWandbLogger(config)
        # RecBole names checkpoints <model>-<time to the second>: two runs started in the same
        # second (parallel trials) would overwrite each other.
        root, ext = os.path.splitext(self.saved_model_file)
        self.saved_model_file = f"{root}-{uuid.uuid4().hex[:8]}{ext}"
        if not config["single_spec"]:
            # Every rank reloads the best model that rank 0 saved: they need its name.
            name = [self.saved_model_file]
            torch.distributed.broadcast_object_list(name, src=0)
            self.saved_model_file = name[0]
        settings = plugin_settings(config)
        self.trust_checkpoint = settings.trust_checkpoint
        # (epoch, batch) of the training step in progress, for the divergence and interruption messages.
        self._position = [self.start_epoch, 0]
        self._last_saved_epoch = None
        self.interrupted_checkpoint = None  # where fit() saved the state when it was interrupted
        # The run's checked settings (recbole_dsl.settings); None while rec_loss is unset.
        self.rec_settings = s = settings.rec
        if s is not None and s.cpu_malloc_tuning and self.device.type == "cpu" and tune_cpu_malloc():
            self.logger.debug("recbole_dsl: glibc malloc keeps freed blocks in the process (cpu_malloc_tuning)")
        if s is not None and s.cpu_flush_denormal and self.device.type == "cpu":
            # Process-wide, like the allocator setting: subnormal floats are flushed to zero. They
            # arise in some models' activations (NAIS's attention) and slow CPU arithmetic by
            # orders of magnitude; values below 1e-38 do not matter to a recommender's training.
            torch.set_flush_denormal(True)

    def _build_optimizer(self, **kwargs):
        # Runs before __init__ has kept the settings (RecBole's __init__ builds the optimizer).
        rec = plugin_settings(self.config).rec
        learner = str(kwargs.get("learner", self.learner)).lower()
        if rec is None or not rec.sparse_update or learner != "adam":
            return super()._build_optimizer(**kwargs)  # SGD takes row-sparse gradients as they are
        return LazyAdam(kwargs.get("params", self.model.parameters()), lr=kwargs.get("learning_rate", self.learning_rate),
                        weight_decay=kwargs.get("weight_decay", self.weight_decay))

    def fit(self, train_data, valid_data=None, verbose=True, saved=True, show_progress=False, callback_fn=None):
        s = self.rec_settings
        # Models trained on RecBole's UserDataLoader (autoencoders, ENMF) already get every
        # positive of a batch user in the batch: their loader is left alone.
        if (s is not None and s.train_batch_mode == "user" and not self.model.rec_adapter.user_batches
                and not isinstance(train_data, UserGroupedTrainDataLoader)):
            train_data = UserGroupedTrainDataLoader.wrap(train_data, s.positives_per_user)
        try:
            return super().fit(train_data, valid_data, verbose, saved, show_progress, callback_fn)
        except KeyboardInterrupt:
            if saved and (self.config["single_spec"] or self.config["local_rank"] == 0):
                self._save_interrupted()
            raise

    def interrupted_file(self) -> str:
        root, ext = os.path.splitext(self.saved_model_file)
        return f"{root}-interrupted{ext}"

    def _save_interrupted(self):
        epoch, batch = self._position
        state = self._checkpoint_state(epoch - 1)  # resume starts at the interrupted epoch
        state["interrupted"] = {"epoch": epoch, "batch": batch}
        # Not in RecBole's checkpoints (its fit() saves before it updates the result): lets the resumed
        # run report the best validation result of the whole run.
        state["best_valid_result"] = self.best_valid_result
        state["best_model_file"] = self.saved_model_file if os.path.isfile(self.saved_model_file) else None
        path = self.interrupted_file()
        save_checkpoint(state, path)
        self.interrupted_checkpoint = RecLossTrainer.last_interrupted_checkpoint = path
        self.logger.warning(
            f"Interrupted in epoch {epoch} after {batch} of its batches: the state reached is saved to {path}; "
            f"continue with resume_checkpoint({path!r}) (command line: --resume={path})"
        )

    def _checkpoint_state(self, epoch) -> dict:
        """RecBole's checkpoint contents (Trainer._save_checkpoint)."""
        return {
            "config": self.config,
            "epoch": epoch,
            "cur_step": self.cur_step,
            "best_valid_score": self.best_valid_score,
            "state_dict": self.model.state_dict(),
            "other_parameter": self.model.other_parameter(),
            "optimizer": self.optimizer.state_dict(),
        }

    def _save_checkpoint(self, epoch, verbose=True, **kwargs):
        if not self.config["single_spec"] and self.config["local_rank"] != 0:
            return
        path = kwargs.pop("saved_model_file", self.saved_model_file)
        save_checkpoint(self._checkpoint_state(epoch), path)
        self._last_saved_epoch = epoch
        if verbose:
            self.logger.info(set_color("Saving current", "blue") + f": {path}")

    def _check_nan(self, loss):
        # Called by RecBole's training loops once per batch, before the backward pass: the parameters
        # are still those of the last finite step.
        self._position[1] += 1
        if not bool(torch.isfinite(loss)):
            epoch, batch = self._position
            raise TrainingDiverged(self._divergence_message(float(loss.detach()), epoch, batch))

    def _divergence_message(self, value, epoch, batch) -> str:
        s = self.rec_settings
        if s is None:
            what = f"{self.config['model']}'s built-in loss"
        else:
            keys = LOSSES.get(s.loss).params  # constructor argument -> its YAML key
            taus = ", ".join(f"{keys.get(k, k)}={v}" for k, v in s.loss_params if "tau" in keys.get(k, k))
            what = f"rec_loss={s.loss}" + (f" ({taus})" if taus else "")
        msg = (f"training diverged: the loss of {what} is {value} at epoch {epoch}, batch {batch}; training "
               f"stopped before this step changed the parameters")
        if self._last_saved_epoch is not None and os.path.isfile(self.saved_model_file):
            msg += f". The last good checkpoint (epoch {self._last_saved_epoch}) is {self.saved_model_file}"
        return msg + ". Try a lower learning_rate" + (" or a higher temperature" if s is not None else "")

    def _train_epoch(self, train_data, epoch_idx, loss_func=None, show_progress=False):
        loss_fn = self.model.rec_loss_fn if self.rec_settings is not None else None
        if loss_func is None:
            self._position[:] = [epoch_idx, 0]
        if loss_fn is None or loss_func is not None:
            return super()._train_epoch(train_data, epoch_idx, loss_func, show_progress)
        sums, count, seen = defaultdict(float), 0, 0
        calc = self.model.calculate_loss

        def tracked(interaction):
            nonlocal count, seen
            out = calc(interaction)
            # Every DIAGNOSTICS_EVERY-th batch (the first included): DSL's weight spread needs
            # reductions over the whole [B, N] block, ~4% of an N = 1000 batch on CPU if done for all.
            if seen % DIAGNOSTICS_EVERY == 0:
                for k, v in loss_fn.diagnostics().items():
                    sums[k] += float(v)
                count += 1
            seen += 1
            return out

        self._inner_parts = []
        total = super()._train_epoch(train_data, epoch_idx, tracked, show_progress)
        if self._inner_parts and not isinstance(total, tuple):
            # A RecBole trainer that adds up inner passes as floats (RecVAETrainer: its decoder
            # passes come last): log the parts of those passes, which sum to its total.
            last = self._inner_parts[-int(getattr(self, "n_dec_epochs", 1)):]
            total = tuple(map(sum, zip(*last)))
        if sums:
            diag = {k: v / count for k, v in sums.items()}
            self.model.last_diagnostics = diag
            self.logger.info(
                set_color(f"epoch {epoch_idx} loss diagnostics", "green") + " ["
                + ", ".join(f"{k}: {v:.4f}" for k, v in diag.items()) + "]"
            )
            for k, v in diag.items():
                self.tensorboard.add_scalar(f"Diagnostics/{k}", v, epoch_idx)
            # commit=False: joins the row fit() logs for this epoch right after (same train_step).
            self.wandblogger.log_metrics(
                {**{f"diagnostics/{k}": v for k, v in diag.items()}, "train_step": epoch_idx},
                head="train", commit=False,
            )
        return total

    def resume_checkpoint(self, resume_file):
        resume_file = str(resume_file)
        checkpoint = load_checkpoint(resume_file, map_location=self.device, trust=self.trust_checkpoint)
        # An interrupted run's state names the run's best checkpoint: later improvements overwrite that
        # one, and the final evaluation loads the best model, not the interrupted state.
        best = checkpoint.get("best_model_file") if "interrupted" in checkpoint else resume_file
        if best:
            self.saved_model_file = str(best)
        self.start_epoch = checkpoint["epoch"] + 1
        self._position = [self.start_epoch, 0]
        self.cur_step = checkpoint["cur_step"]
        self.best_valid_score = checkpoint["best_valid_score"]
        if "interrupted" in checkpoint:
            self.best_valid_result = checkpoint.get("best_valid_result")
        if checkpoint["config"]["model"].lower() != self.config["model"].lower():
            self.logger.warning(
                "Architecture configuration given in config file is different from that of checkpoint. "
                "This may yield an exception while state_dict is being loaded."
            )
        if checkpoint["config"]["rec_loss"] != self.config["rec_loss"]:
            self.logger.warning(
                f"The checkpoint was trained with rec_loss={checkpoint['config']['rec_loss']!r}; "
                f"training resumes with rec_loss={self.config['rec_loss']!r}."
            )
        self.model.load_state_dict(checkpoint["state_dict"])
        self.model.load_other_parameter(checkpoint.get("other_parameter"))
        self.optimizer.load_state_dict(checkpoint["optimizer"])
        self.logger.info(f"Checkpoint loaded. Resume training from epoch {self.start_epoch}")

    def evaluate(self, eval_data, load_best_model=True, model_file=None, show_progress=False):
        if load_best_model and eval_data:
            if not self.config["single_spec"]:
                torch.distributed.barrier()  # rank 0 has written the best model
            checkpoint_file = model_file or self.saved_model_file
            checkpoint = load_checkpoint(checkpoint_file, map_location=self.device, trust=self.trust_checkpoint)
            self.model.load_state_dict(checkpoint["state_dict"])
            self.model.load_other_parameter(checkpoint.get("other_parameter"))
            self.logger.info(f"Loading model structure and parameters from {checkpoint_file}")
        return super().evaluate(eval_data, load_best_model=False, show_progress=show_progress)


class _PartsCollector(Trainer):
    """Placed under RecVAETrainer in the plugin's class (its _train_epoch sums its encoder and
    decoder passes as floats, which a multi-part loss would break): each pass's parts are summed
    for it and kept, so RecLossTrainer._train_epoch can log them. A single-part total (the
    built-in loss) passes through untouched."""

    def _train_epoch(self, train_data, epoch_idx, loss_func=None, show_progress=False):
        total = super()._train_epoch(train_data, epoch_idx, loss_func, show_progress)
        if isinstance(total, tuple) and isinstance(getattr(self, "_inner_parts", None), list):
            self._inner_parts.append(total)
            return sum(total)
        return total


@functools.lru_cache(maxsize=None)
def _plugin_trainer(base):
    if base is Trainer:
        return RecLossTrainer
    bases = (RecLossTrainer, base, _PartsCollector) if base is RecVAETrainer else (RecLossTrainer, base)
    return type(base.__name__, bases, {"__module__": __name__, "__qualname__": base.__qualname__})


def get_trainer(model_type, model_name):
    """RecBole's get_trainer (so NCLTrainer, RecVAETrainer, ... are kept), with the plugin's hooks."""
    base = recbole_get_trainer(model_type, model_name)
    if not issubclass(base, Trainer):
        return base
    return _plugin_trainer(base)
