"""InstructGPT's K-way reward-model training on Laoshi's rankings snapshots.

No Django import. One batch element is one prompt with all its K ranked responses
(InstructGPT section 3.5): each response goes through the model once per step, and the
C(K, 2) comparisons are formed from the K scalar rewards by
``training.losses.kway_reward_loss``. TRL's RewardTrainer, fed the same rankings as
pairs, runs 2 x C(K, 2) sequences per prompt instead of K (3x as many at K=4, 8x at
K=9); ``bench/reward_speed.py`` measures the difference. On one process the tokens the
K sequences of a prompt share (the prompt) run once too, and each response continues
from their key/value cache (``RankingCollator(share_prompt=True)``): the rewards are the
same as running every sequence in full, for less compute.

    from training.reward_config import RewardConfig
    from training.reward_trainer import train_reward

    config = RewardConfig(model_path="var/models/sft", output_dir="var/models/rm")
    metrics = train_reward(config, "snapshot/train.jsonl", "snapshot/valid.jsonl")

The pieces, for other callers: ``load_rankings`` (rankings rows to elements),
``RankingCollator`` (tokenizes the K responses of each element into one padded batch),
``KWayRewardTrainer`` (transformers' Trainer with the K-way loss and held-out pairwise
accuracy), ``score_responses`` (the reward of (prompt, response) pairs, encoded exactly
as in training: what PPO and the bias use).

The final model (the output directory itself) is a normal ``save_pretrained`` directory
(safetensors, tokenizer) that AutoModelForSequenceClassification loads, with
``laoshi_training.json`` (config, step, best metric, metrics, versions) written last;
resumable checkpoints, each with the run's ``laoshi_reward_config.json``, are in its
``checkpoints`` folder. The model's config carries ``laoshi_reward_bias``, the reward to
subtract before RL so that the demonstrations score 0 on average (see
``training.losses.reward_bias``).
"""

import dataclasses
import logging
import os
import random
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import torch
import transformers
from transformers import (
    AutoModelForSequenceClassification,
    AutoTokenizer,
    EvalPrediction,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    Trainer,
    TrainerCallback,
    set_seed,
)

from modelhub.ml.generation import pad_rows
from training.checkpoints import save_final_model
from training.datasets.formats import is_chat
from training.losses import kway_reward_loss, pair_matrix, reward_bias
from training.reward_config import RewardConfig

logger = logging.getLogger(__name__)

Prompt = str | list[dict[str, str]]
CONFIG_FILE = "laoshi_reward_config.json"
BIAS_KEY = "laoshi_reward_bias"


# -- Data ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class RankedElement:
    """One batch element: a prompt and its ranked responses (rank 1 is best, ties equal).

    ``ratings`` are aligned with ``responses`` (None where missing), for margins.
    """

    prompt: Prompt
    responses: tuple[str, ...]
    ranks: tuple[int, ...]
    ratings: tuple[float | None, ...]
    task_id: Any = None
    annotator: Any = None


def read_rows(source: str | os.PathLike | Iterable[Mapping[str, Any]]) -> Iterable[Mapping]:
    """Return the rows of a JSONL file (read whole), or the given rows as they are."""
    if isinstance(source, str | os.PathLike):
        with open(source, "rb") as stream:
            return [orjson.loads(line) for line in stream if line.strip()]
    return source


def _check_aligned(values: Any, n: int, what: str, task_id: Any) -> list:
    if not isinstance(values, list) or len(values) != n:
        raise ValueError(f"task {task_id!r}: {what} must be a list aligned with its "
                         f"{n} responses, not {values!r}")
    return values


def _element(row: Mapping[str, Any], texts: list[str], ranks: list, ratings: list,
             annotator: Any) -> RankedElement | None:
    """Return the element of one ranking, or None when it states no comparison."""
    task_id = row.get("task_id")
    kept = []
    for i, rank in enumerate(ranks):
        if rank is None:
            continue  # this ranking left the response out: it takes no part
        if isinstance(rank, bool) or not isinstance(rank, int) or rank < 1:
            raise ValueError(f"task {task_id!r}: a rank must be a whole number >= 1 or "
                             f"null, not {rank!r}")
        kept.append(i)
    if len({ranks[i] for i in kept}) < 2:
        return None  # fewer than two responses, or all tied: no pair, nothing to learn
    return RankedElement(
        prompt=row["prompt"],
        responses=tuple(texts[i] for i in kept),
        ranks=tuple(ranks[i] for i in kept),
        ratings=tuple(ratings[i] for i in kept),
        task_id=task_id,
        annotator=annotator,
    )


def _mean_ratings(annotators: list[Mapping[str, Any]], n: int) -> list[float | None]:
    means = []
    for i in range(n):
        values = [a["ratings"][i] for a in annotators
                  if a.get("ratings") and a["ratings"][i] is not None]
        means.append(sum(values) / len(values) if values else None)
    return means


def load_rankings(
    source: str | os.PathLike | Iterable[Mapping[str, Any]],
    *,
    ranking: str = "consensus",
) -> list[RankedElement]:
    """Return the K-way elements of a rankings JSONL file (or of its rows already read).

    ``ranking="consensus"``: one element per row, from its ``consensus`` ranks, with the
    mean of the annotators' ratings. ``"per_annotator"``: one element per annotator, with
    that annotator's ranks and ratings. A response ranked null is left out of the element;
    an element with fewer than two distinct ranks (all tied) states no comparison and is
    skipped. A malformed row raises ValueError.
    """
    if ranking not in ("consensus", "per_annotator"):
        raise ValueError(f"ranking must be consensus or per_annotator, not {ranking!r}")
    elements: list[RankedElement] = []
    rows = skipped = 0
    for row in read_rows(source):
        rows += 1
        task_id = row.get("task_id")
        prompt = row.get("prompt")
        if not (isinstance(prompt, str) or is_chat(prompt)):
            raise ValueError(f"task {task_id!r}: the prompt must be a string or a list of "
                             f"{{role, content}} messages, not {prompt!r}")
        responses = row.get("responses")
        if not isinstance(responses, list) or not all(
                isinstance(r, Mapping) and isinstance(r.get("text"), str) for r in responses):
            raise ValueError(f"task {task_id!r}: responses must be a list of "
                             f"{{completion_id, text}}, not {responses!r}")
        texts = [r["text"] for r in responses]
        annotators = row.get("annotators") or []
        for entry in annotators:
            _check_aligned(entry.get("ranks"), len(texts), "an annotator's ranks", task_id)
            if entry.get("ratings"):
                _check_aligned(entry["ratings"], len(texts), "an annotator's ratings", task_id)
        if ranking == "consensus":
            ranks = _check_aligned(row.get("consensus"), len(texts), "consensus", task_id)
            found = [_element(row, texts, ranks, _mean_ratings(annotators, len(texts)), None)]
        else:
            found = [_element(row, texts, entry["ranks"],
                              entry.get("ratings") or [None] * len(texts), entry.get("annotator"))
                     for entry in annotators]
        elements.extend(e for e in found if e is not None)
        skipped += sum(e is None for e in found)
    logger.info("rankings: %d rows, %d elements, %d skipped (no comparison)",
                rows, len(elements), skipped)
    return elements


def render(tokenizer: PreTrainedTokenizerBase, prompt: Prompt, response: str) -> tuple[str, bool]:
    """Return the text the reward model reads for (prompt, response), and whether it is a chat.

    The same text as TRL's RewardTrainer builds: a chat prompt goes through the chat template
    with the response as the assistant's turn; a plain prompt is followed by the response
    as a raw continuation and the end-of-sequence token. A chat for a tokenizer with no
    chat template is written as "role: content" lines, then "assistant: " and the response.
    """
    if isinstance(prompt, str):
        eos = tokenizer.eos_token or ""
        text = prompt + response
        return (text if text.endswith(eos) else text + eos), False
    messages = [{"role": m["role"], "content": m["content"]} for m in prompt]
    messages.append({"role": "assistant", "content": response})
    if tokenizer.chat_template:
        return tokenizer.apply_chat_template(messages, tokenize=False), True
    lines = "\n".join(f"{m['role']}: {m['content']}" for m in messages)
    return lines + (tokenizer.eos_token or ""), False


def encode(tokenizer: PreTrainedTokenizerBase, pairs: Sequence[tuple[Prompt, str]],
           *, max_length: int) -> list[list[int]]:
    """Return the token ids of each (prompt, response), at most max_length, cut on the left."""
    rendered = [render(tokenizer, prompt, response) for prompt, response in pairs]
    ids: list[list[int] | None] = [None] * len(rendered)
    for chat in (False, True):
        where = [i for i, (_, is_template) in enumerate(rendered) if is_template == chat]
        if not where:
            continue
        # A rendered chat template holds its special tokens already; plain text gets the
        # tokenizer's own (none for GPT-2), as TRL tokenizes it.
        encoded = tokenizer([rendered[i][0] for i in where],
                            add_special_tokens=not chat)["input_ids"]
        for i, tokens in zip(where, encoded, strict=True):
            # The reward is read at the last token, so the end of the response must stay.
            ids[i] = tokens[-max_length:]
    return ids


def _last_real(tokens: list[int], pad_id: int) -> int:
    """Return where a sequence classifier reads the reward: the last token that is not pad."""
    # transformers' *ForSequenceClassification take the rightmost token != pad_token_id
    # (0 when there is none), so with pad = eos a trailing eos is read past.
    for i in range(len(tokens) - 1, -1, -1):
        if tokens[i] != pad_id:
            return i
    return 0


def shared_prefix(sequences: Sequence[list[int]], pad_id: int) -> int:
    """Return how many leading tokens all sequences share and may compute once.

    Each sequence keeps at least the token its reward is read at, so every reward comes
    from the second, per-response pass.
    """
    limit = min(_last_real(s, pad_id) for s in sequences)
    first = sequences[0]
    n = 0
    while n < limit and all(s[n] == first[n] for s in sequences):
        n += 1
    return n


class RankingCollator:
    """Tokenize the K responses of each element into one batch of sum(K) sequences.

    Always returns ``index`` [B, Kmax] (the row of each response; 0 under padding),
    ``ranks`` and ``mask`` [B, Kmax], and with ``margin``, ``margins`` [B, Kmax, Kmax]:
    for i ranked above j, max(0, rating_i - rating_j), 0 where a rating is missing.

    The sequences come in one of two forms (right padding in both):

    - full: ``input_ids`` and ``attention_mask`` [sum K, L], prompt and response;
    - with ``share_prompt``, when it saves at least a fifth of the tokens: the tokens
      the K sequences of an element have in common (the prompt, mostly) once per element
      in ``prefix_ids``/``prefix_mask`` [B, Lp], and the rest of each sequence in
      ``suffix_ids``/``suffix_mask`` [sum K, Ls] with ``suffix_element`` [sum K], the
      element each belongs to. Causal attention makes the rewards the same as the full
      form's (``KWayRewardTrainer`` runs the prefix once and each suffix on its cache).
    """

    # Two passes cost more fixed work than one: share only when it saves this much.
    SHARE_MIN_SAVING = 0.2

    def __init__(self, tokenizer: PreTrainedTokenizerBase, *, max_length: int,
                 margin: bool = False, share_prompt: bool = False):
        if tokenizer.pad_token_id is None:
            raise ValueError("the tokenizer needs a pad token (set it to the eos token)")
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.margin = margin
        self.share_prompt = share_prompt

    def __call__(self, elements: Sequence[RankedElement]) -> dict[str, torch.Tensor]:
        pad_id = self.tokenizer.pad_token_id
        ids = encode(self.tokenizer, [(e.prompt, text) for e in elements for text in e.responses],
                     max_length=self.max_length)
        width = max(len(e.responses) for e in elements)
        index = torch.zeros((len(elements), width), dtype=torch.long)
        ranks = torch.zeros((len(elements), width), dtype=torch.long)
        mask = torch.zeros((len(elements), width), dtype=torch.bool)
        groups = []
        row = 0
        for b, element in enumerate(elements):
            k = len(element.responses)
            index[b, :k] = torch.arange(row, row + k)
            ranks[b, :k] = torch.tensor(element.ranks)
            mask[b, :k] = True
            groups.append(ids[row:row + k])
            row += k
        batch = {"index": index, "ranks": ranks, "mask": mask}
        batch.update(self._shared(groups, pad_id) if self.share_prompt else {})
        if "prefix_ids" not in batch:
            batch["input_ids"], batch["attention_mask"] = pad_rows(ids, pad_id, left=False)
        if self.margin:
            batch["margins"] = self._margins(elements, width)
        return batch

    def _shared(self, groups: list[list[list[int]]], pad_id: int) -> dict[str, torch.Tensor]:
        """Return the prefix/suffix form, or {} when it would not save enough."""
        cuts = [shared_prefix(group, pad_id) for group in groups]
        # An element with nothing in common would need an empty prefix row, which attends
        # to nothing (NaN in some attention kernels): such a batch stays in the full form.
        if min(cuts) == 0:
            return {}
        suffixes = [seq[cut:] for group, cut in zip(groups, cuts, strict=True) for seq in group]
        full = sum(len(group) for group in groups) * max(len(s) for g in groups for s in g)
        shared = len(groups) * max(cuts) + len(suffixes) * max(len(s) for s in suffixes)
        if shared > (1 - self.SHARE_MIN_SAVING) * full:
            return {}
        prefixes = [group[0][:cut] for group, cut in zip(groups, cuts, strict=True)]
        prefix_ids, prefix_mask = pad_rows(prefixes, pad_id, left=False)
        suffix_ids, suffix_mask = pad_rows(suffixes, pad_id, left=False)
        element = torch.repeat_interleave(torch.arange(len(groups)),
                                          torch.tensor([len(g) for g in groups]))
        return {"prefix_ids": prefix_ids, "prefix_mask": prefix_mask, "suffix_ids": suffix_ids,
                "suffix_mask": suffix_mask, "suffix_element": element}

    @staticmethod
    def _margins(elements: Sequence[RankedElement], width: int) -> torch.Tensor:
        margins = torch.zeros((len(elements), width, width))
        for b, element in enumerate(elements):
            rated = torch.tensor([float("nan") if r is None else float(r)
                                  for r in element.ratings])
            k = len(rated)
            margins[b, :k, :k] = (rated.unsqueeze(1) - rated.unsqueeze(0)).nan_to_num(0.0) \
                .clamp(min=0.0)
        return margins


# -- Model and trainer ----------------------------------------------------------------------

def load_tokenizer(path: str) -> PreTrainedTokenizerBase:
    """Return a checkpoint's tokenizer with a pad token (the eos when it has none)."""
    tokenizer = AutoTokenizer.from_pretrained(path)
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise ValueError(f"{path}: the tokenizer has neither a pad nor an eos token")
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_reward_model(model_path: str, tokenizer: PreTrainedTokenizerBase,
                      **kwargs: Any) -> PreTrainedModel:
    """Return a scalar-head model (num_labels=1) built from a causal LM or reward checkpoint.

    Only the head (``score``) may be missing from the checkpoint: any other missing weight
    means the checkpoint is not the architecture its config names, and raises ValueError.
    """
    model, info = AutoModelForSequenceClassification.from_pretrained(
        model_path, num_labels=1, output_loading_info=True, **kwargs)
    missing = [k for k in info.get("missing_keys", ()) if not k.startswith("score.")]
    if missing:
        raise ValueError(f"{model_path}: weights missing from the checkpoint: {missing[:5]}")
    # Sequence classification reads the reward at the last token that is not padding, so
    # the model must know the pad token (GPT-2 checkpoints often have none).
    model.config.pad_token_id = tokenizer.pad_token_id
    return model


def _disable_dropout(model: torch.nn.Module) -> None:
    # The K rewards of a prompt are compared with each other: independent dropout noise
    # on each is noise in every difference (TRL's reward trainer turns it off too).
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0


def can_share_prompt(model: PreTrainedModel) -> bool:
    """Return whether the model has the parts the shared-prompt form needs.

    A body that takes a KV cache (``base_model``) and a linear head ``score`` applied per
    position, as transformers' decoder *ForSequenceClassification models have.
    """
    return (isinstance(getattr(model, "score", None), torch.nn.Linear)
            and model.base_model is not model
            and getattr(model.config, "pad_token_id", None) is not None)


def _shared_scores(model: PreTrainedModel, inputs: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """Return the reward of every suffix row: the prefix runs once, each suffix on its cache."""
    body = model.base_model
    prefix_mask, suffix_mask = inputs["prefix_mask"], inputs["suffix_mask"]
    element = inputs["suffix_element"]
    cache = body(input_ids=inputs["prefix_ids"], attention_mask=prefix_mask,
                 use_cache=True).past_key_values
    cache.batch_select_indices(element)  # one copy of its element's prefix per response
    # The prefix is right-padded: a response's positions go on from its own prefix length,
    # and the mask hides the prefix padding between them.
    positions = prefix_mask.sum(dim=1)[element].unsqueeze(1) \
        + torch.arange(suffix_mask.shape[1], device=suffix_mask.device)
    hidden = body(input_ids=inputs["suffix_ids"],
                  attention_mask=torch.cat([prefix_mask[element], suffix_mask], dim=1),
                  past_key_values=cache, position_ids=positions, use_cache=True).last_hidden_state
    # Read where the full form's classifier reads: the last token that is not pad.
    real = (inputs["suffix_ids"] != model.config.pad_token_id).long()
    last = (torch.arange(real.shape[1], device=real.device) * real).argmax(dim=1)
    return model.score(hidden[torch.arange(hidden.shape[0], device=hidden.device), last])[:, 0]


def _rewards(model: torch.nn.Module, inputs: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """Return the rewards [B, Kmax] of a collated batch, either form (0 under padding)."""
    if "prefix_ids" in inputs:
        scores = _shared_scores(model, inputs)
    else:
        scores = model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"],
                       use_cache=False).logits[:, 0]
    scores = scores[inputs["index"]]
    return torch.where(inputs["mask"], scores, torch.zeros_like(scores))


def pairwise_metrics(prediction: EvalPrediction) -> dict[str, float]:
    """Return held-out loss and pairwise accuracy from the per-prompt rows of an evaluation.

    Each row is (loss, pairs, correct pairs, sum of rewards, responses) of one prompt, as
    ``KWayRewardTrainer.prediction_step`` returns them. The loss is the mean over prompts;
    the accuracy is pooled over all pairs (ties excluded, a tie in reward counts wrong).
    """
    rows = torch.as_tensor(prediction.predictions, dtype=torch.float64).reshape(-1, 5)
    loss, pairs, correct, reward_sum, responses = rows.unbind(1)
    with_pairs = pairs > 0
    return {
        "loss": loss[with_pairs].mean().item(),
        "accuracy": (correct.sum() / pairs.sum()).item(),
        "num_pairs": int(pairs.sum().item()),
        "reward_mean": (reward_sum.sum() / responses.sum()).item(),
    }


class KWayRewardTrainer(Trainer):
    """transformers' Trainer with InstructGPT's K-way ranking loss.

    Train and eval datasets are sequences of ``RankedElement`` and the collator a
    ``RankingCollator``. Logs train loss, pairwise accuracy and mean reward; evaluation
    reports held-out ``eval_loss`` (mean over prompts) and ``eval_accuracy`` (over pairs).
    ``reward_config`` (a RewardConfig) is written next to every checkpoint.
    """

    # The loss is a per-batch mean: Trainer divides it by the accumulation steps.
    loss_is_scaled_for_ga = False

    def __init__(self, *args: Any, reward_config: RewardConfig | None = None, **kwargs: Any):
        kwargs.setdefault("compute_metrics", pairwise_metrics)
        super().__init__(*args, **kwargs)
        self.reward_config = reward_config
        # GPT-2's forward takes **kwargs, which Trainer reads as "the model computes its
        # own loss over num_items_in_batch"; this loss never goes through the model.
        self.model_accepts_loss_kwargs = False
        self._window = None  # train statistics summed since the last log

    def _batch_rewards(self, model: torch.nn.Module, inputs: Mapping[str, torch.Tensor]):
        if "prefix_ids" not in inputs:
            return _rewards(model, inputs)
        # The shared form calls the model's body and head directly, past the wrappers of
        # forward (accelerate's autocast here; DDP's gradient sync, hence one process only).
        if self.accelerator.num_processes > 1:
            raise RuntimeError("the shared-prompt form runs on one process only: turn "
                               "share_prompt off for distributed training")
        with self.accelerator.autocast():
            return _rewards(self.accelerator.unwrap_model(model), inputs)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        rewards = self._batch_rewards(model, inputs)
        loss, stats = kway_reward_loss(rewards, inputs["ranks"], inputs["mask"],
                                       margins=inputs.get("margins"))
        if model.training:
            with torch.no_grad():
                mask = inputs["mask"]
                # Summed on the device, read only when logging: no sync per step.
                step = torch.stack([
                    stats["num_correct"].float(),
                    stats["num_pairs"].float(),
                    torch.where(mask, rewards.float(), 0.0).sum(),
                    mask.sum().float(),
                ])
                self._window = step if self._window is None else self._window + step
        return (loss, {"rewards": rewards}) if return_outputs else loss

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        """Return (None, rows, rows): one (loss, pairs, correct, reward sum, responses) per prompt.

        No loss of its own: ``pairwise_metrics`` computes ``eval_loss`` from the rows, as a
        mean over prompts (Trainer's would weight each batch equally).
        """
        inputs = self._prepare_inputs(inputs)
        with torch.no_grad(), self.compute_loss_context_manager():
            rewards = self._batch_rewards(model, inputs).float()
            ranks, mask = inputs["ranks"], inputs["mask"]
            per_prompt, _ = kway_reward_loss(rewards, ranks, mask, margins=inputs.get("margins"),
                                             reduction="none")
            pairs = pair_matrix(ranks, mask)
            diff = rewards.unsqueeze(2) - rewards.unsqueeze(1)
            rows = torch.stack([
                per_prompt.float(),
                pairs.sum(dim=(1, 2)).float(),
                ((diff > 0) & pairs).sum(dim=(1, 2)).float(),
                torch.where(mask, rewards, 0.0).sum(dim=1),
                mask.sum(dim=1).float(),
            ], dim=1)
        return None, rows, rows

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if "loss" in logs and self._window is not None:
            window = self._window
            if self.accelerator.num_processes > 1:
                window = self.accelerator.reduce(window, reduction="sum")
            correct, pairs, reward_sum, responses = window.tolist()
            if pairs > 0:
                logs["accuracy"] = correct / pairs
            if responses > 0:
                logs["reward_mean"] = reward_sum / responses
            self._window = None
        super().log(logs, start_time)

    def save_model(self, output_dir: str | None = None, _internal_call: bool = False) -> None:
        super().save_model(output_dir, _internal_call)
        if self.reward_config is not None and self.args.should_save:
            target = Path(output_dir or self.args.output_dir)
            (target / CONFIG_FILE).write_bytes(
                orjson.dumps(self.reward_config.to_dict(), option=orjson.OPT_INDENT_2))


# -- Scoring and the bias -------------------------------------------------------------------

@torch.no_grad()
def score_responses(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase,
                    pairs: Sequence[tuple[Prompt, str]], *, max_length: int,
                    batch_size: int = 32) -> torch.Tensor:
    """Return the reward [N] (float32, on CPU) of each (prompt, response), encoded as in training.

    Does not subtract the bias: callers that want zero-mean demonstrations subtract
    ``model.config.laoshi_reward_bias``.
    """
    if not pairs:
        return torch.zeros(0)
    was_training = model.training
    model.eval()
    ids = encode(tokenizer, pairs, max_length=max_length)
    # Similar lengths together: less padding.
    order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
    scores = torch.empty(len(ids))
    device = next(model.parameters()).device
    for start in range(0, len(order), batch_size):
        chunk = order[start:start + batch_size]
        input_ids, attention = pad_rows([ids[i] for i in chunk], tokenizer.pad_token_id,
                                        left=False)
        logits = model(input_ids=input_ids.to(device), attention_mask=attention.to(device),
                       use_cache=False).logits
        scores[chunk] = logits[:, 0].float().cpu()
    model.train(was_training)
    return scores


def demonstration_pairs(demonstrations: Iterable[Any]) -> list[tuple[Prompt, str]]:
    """Return (prompt, response) of each demonstration: a pair or an SFT row."""
    pairs = []
    for item in demonstrations:
        if isinstance(item, Mapping):
            prompt, response = item.get("prompt"), item.get("completion")
            if isinstance(response, list):  # a conversational SFT row: [assistant message]
                response = "".join(m["content"] for m in response)
        else:
            prompt, response = item
        if not isinstance(response, str) or not (isinstance(prompt, str) or is_chat(prompt)):
            raise ValueError(f"a demonstration must be (prompt, response) or an SFT row "
                             f"{{prompt, completion}}, not {item!r}")
        pairs.append((prompt, response))
    return pairs


def bias_pairs(elements: Sequence[RankedElement], demonstrations: Iterable[Any] | None,
               *, limit: int, seed: int) -> tuple[list[tuple[Prompt, str]], str]:
    """Return the (prompt, response) pairs that set the reward bias, and their source.

    InstructGPT sets the bias so that the labelers' demonstrations score 0 on average.
    Without demonstrations the best-ranked responses of each element stand in for them
    (source "best_ranked"): the responses annotators preferred are the nearest thing to a
    demonstration that a rankings snapshot holds, though usually somewhat worse than one,
    so the bias comes out lower than the demonstrations' would. At most ``limit`` pairs,
    a seeded sample.
    """
    if demonstrations is not None:
        pairs, source = demonstration_pairs(demonstrations), "demonstrations"
    else:
        pairs, source = [], "best_ranked"
        for element in elements:
            best = min(element.ranks)
            pairs.extend((element.prompt, text)
                         for text, rank in zip(element.responses, element.ranks, strict=True)
                         if rank == best)
    if not pairs:
        raise ValueError(f"no {source} responses to compute the reward bias from")
    if len(pairs) > limit:
        pairs = random.Random(seed).sample(pairs, limit)
    return pairs, source


@torch.no_grad()
def shared_prompt_matches(model: PreTrainedModel, collator: RankingCollator,
                          elements: Sequence[RankedElement], *, tolerance: float = 1e-3) -> bool:
    """Return whether the shared-prompt form gives this model the full form's rewards.

    Checked on a few elements before training: a model whose body takes the cache in
    some other way would otherwise train on wrong rewards without a word.
    """
    sample = list(elements[:8])
    shared = collator(sample)
    if "prefix_ids" not in shared:
        return True  # nothing shared here: no evidence either way, and nothing at stake
    full = RankingCollator(collator.tokenizer, max_length=collator.max_length)(sample)
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    try:
        a = _rewards(model, {k: v.to(device) for k, v in shared.items()}).float()
        b = _rewards(model, {k: v.to(device) for k, v in full.items()}).float()
    except (TypeError, ValueError, RuntimeError, AttributeError) as error:
        logger.warning("the shared-prompt form fails on this model (%s): off", error)
        return False
    finally:
        model.train(was_training)
    gap = (a - b).abs().max().item()
    if not gap <= tolerance * (1 + b.abs().max().item()):
        logger.warning("the shared-prompt form gives other rewards on this model (gap %.3g): "
                       "off", gap)
        return False
    return True


# -- Entry point ----------------------------------------------------------------------------

def save_reward_model(trainer: KWayRewardTrainer, config: RewardConfig,
                      metrics: Mapping[str, Any]) -> Path:
    """Save the trained model, its tokenizer and the training record into output_dir.

    Every file is written aside and renamed into place, so none is ever seen half
    written; the record (``laoshi_training.json``), renamed last, says the directory
    holds a complete model.
    """
    out = Path(config.output_dir)
    if not trainer.is_world_process_zero():
        return out
    record = {
        "kind": "reward",
        "base_model": config.model_path,
        "config": config.to_dict(),
        "step": trainer.state.global_step,
        "best_metric": trainer.state.best_metric,
        "metrics": dict(metrics),
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__},
    }
    # save_pretrained rather than trainer.save_model, which also pickles the training
    # arguments (training_args.bin) into the model folder.
    return save_final_model(out, trainer.accelerator.unwrap_model(trainer.model),
                            trainer.processing_class, record)


def train_reward(
    config: RewardConfig,
    train_rows: str | os.PathLike | Iterable[Mapping[str, Any]],
    eval_rows: str | os.PathLike | Iterable[Mapping[str, Any]] | None = None,
    *,
    demonstrations: Iterable[Any] | None = None,
    callbacks: list[TrainerCallback] | None = None,
    resume_from_checkpoint: str | bool | None = None,
    model_init: Callable[[PreTrainedModel], None] | None = None,
) -> dict[str, Any]:
    """Train a reward model on rankings, save it to ``config.output_dir``, return its metrics.

    ``train_rows``/``eval_rows``: rankings JSONL paths or rows. ``demonstrations``:
    (prompt, response) pairs or SFT rows whose mean reward becomes the bias (default: the
    best-ranked training responses, see ``bias_pairs``). ``resume_from_checkpoint``: a
    checkpoint directory, or True for the newest in ``config.checkpoint_dir``. ``model_init`` is
    called on the loaded model before training (tests use it to watch the forward pass).

    Metrics: ``train_loss``, ``train_runtime``, ``global_step``, the final held-out
    ``eval_loss``/``eval_accuracy`` (with eval rows), ``reward_bias``,
    ``reward_bias_source``, element counts and ``model_dir``.
    """
    train_elements = load_rankings(train_rows, ranking=config.ranking)
    eval_elements = load_rankings(eval_rows, ranking=config.ranking) if eval_rows else []
    if not train_elements:
        raise ValueError("the training rankings hold no comparison (every row tied or empty)")
    if eval_rows and not eval_elements:
        raise ValueError("the held-out rankings hold no comparison (every row tied or empty)")

    # The new head's initialisation comes from the global generator: seed before loading.
    set_seed(config.seed)
    tokenizer = load_tokenizer(config.model_path)
    model = load_reward_model(config.model_path, tokenizer)
    positions = getattr(model.config, "max_position_embeddings", None)
    if positions and config.max_length > positions:
        # A longer text would index past the position embeddings: cut it to the model.
        logger.warning("max_length %d is more than the model's %d positions: using %d",
                       config.max_length, positions, positions)
        config = dataclasses.replace(config, max_length=positions)
    if config.disable_dropout:
        _disable_dropout(model)
    if model_init is not None:
        model_init(model)

    args = config.training_arguments(evaluate=bool(eval_elements))
    collator = RankingCollator(tokenizer, max_length=config.max_length, margin=config.margin)
    # Gradient checkpointing drops the cache; DDP must see every forward pass.
    if (config.share_prompt and not config.gradient_checkpointing and args.world_size == 1
            and can_share_prompt(model)):
        collator.share_prompt = True
        collator.share_prompt = shared_prompt_matches(model, collator, train_elements)
    trainer = KWayRewardTrainer(
        model=model,
        args=args,
        train_dataset=train_elements,
        eval_dataset=eval_elements or None,
        processing_class=tokenizer,
        data_collator=collator,
        callbacks=callbacks,
        reward_config=config,
    )
    result = trainer.train(resume_from_checkpoint=resume_from_checkpoint)
    metrics: dict[str, Any] = dict(result.metrics)
    metrics["global_step"] = trainer.state.global_step
    metrics["num_train_elements"] = len(train_elements)
    metrics["shared_prompt"] = collator.share_prompt
    if eval_elements:
        # Trainer evaluates after the last step itself when evaluating every N steps.
        final = [e for e in trainer.state.log_history
                 if "eval_accuracy" in e and e.get("step") == trainer.state.global_step]
        metrics.update({k: v for k, v in final[-1].items() if k.startswith("eval_")}
                       if final else trainer.evaluate())
        metrics["num_eval_elements"] = len(eval_elements)

    pairs, source = bias_pairs(train_elements, demonstrations,
                               limit=config.bias_max_responses, seed=config.seed)
    scores = score_responses(trainer.model, tokenizer, pairs, max_length=config.max_length,
                             batch_size=max(8, config.per_device_prompts * 4))
    bias = reward_bias(scores)
    trainer.model.config.update({BIAS_KEY: bias, f"{BIAS_KEY}_source": source,
                                 f"{BIAS_KEY}_count": len(pairs)})
    metrics.update(reward_bias=bias, reward_bias_source=source, reward_bias_count=len(pairs))

    metrics["model_dir"] = str(config.output_dir)
    save_reward_model(trainer, config, metrics)
    trainer.accelerator.wait_for_everyone()
    return metrics
