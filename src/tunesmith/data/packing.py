"""Pack several examples into rows of at most `max_length` tokens, and collate batches.

In a packed row each example keeps its own position ids (restarting at 0). transformers builds a
block-diagonal causal mask from position ids when no attention mask is given, so no token attends to
another example; that mask costs the square of the row's width, so rows are capped at `max_length`.
With per-example attention (`tunesmith.models.attention`) a row costs only its examples' own squares,
so `flat=True` packs the whole micro-batch into one row with no padding. Targets are shifted here,
inside each example: the last token of one example never learns to predict the first token of the next.

`share_prefixes=True` goes one step further: examples that begin with the same untrained tokens (most
often one system prompt, rendered into every example) share one copy of them in the row, and each
example's own tokens attend to that copy (`prefix_groups`, `collate_shared_prefixes`).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch

from tunesmith.data.templates import IGNORE, TokenizedExample


def pack_examples(lengths: list[int], max_length: int) -> list[list[int]]:
    """Group example indices into rows whose total length is <= max_length (first-fit decreasing).

    Rows keep their examples in ascending index order so a batch packs the same way every time.
    """
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    rows: list[list[int]] = []
    room: list[int] = []
    for i in order:
        if lengths[i] > max_length:
            raise ValueError(f"example of {lengths[i]} tokens exceeds the row length {max_length}")
        for r, free in enumerate(room):
            if lengths[i] <= free:
                rows[r].append(i)
                room[r] -= lengths[i]
                break
        else:
            rows.append([i])
            room.append(max_length - lengths[i])
    return [sorted(r) for r in rows]


def shifted_targets(labels: list[int]) -> list[int]:
    """targets[t] = labels[t + 1]: what position t predicts; the last position predicts nothing."""
    return labels[1:] + [IGNORE]


@dataclass
class Batch:
    input_ids: torch.Tensor  # [rows, length]
    targets: torch.Tensor  # [rows, length], already shifted, IGNORE where no loss
    position_ids: torch.Tensor | None  # packed rows: restarting per example
    attention_mask: torch.Tensor | None  # [rows, length] 1 for real tokens, 0 for padding; or [rows, 1, L, L] bool
    num_tokens: int  # real (non-padding) tokens
    num_targets: int  # tokens the loss covers
    example_ids: torch.Tensor  # [rows, length]: index of the example (in the collated list), -1 for padding
    # and for a prefix that several examples share

    def to(self, device: torch.device) -> Batch:
        def move(t: torch.Tensor) -> torch.Tensor:
            return t.to(device, non_blocking=True)

        return Batch(
            move(self.input_ids),
            move(self.targets),
            None if self.position_ids is None else move(self.position_ids),
            None if self.attention_mask is None else move(self.attention_mask),
            self.num_tokens,
            self.num_targets,
            move(self.example_ids),
        )


def collate_padded(examples: list[TokenizedExample], pad_id: int) -> Batch:
    """One example per row, right-padded to the longest in the batch."""
    width = max(len(e.input_ids) for e in examples)
    ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    targets = torch.full((len(examples), width), IGNORE, dtype=torch.long)
    mask = torch.zeros((len(examples), width), dtype=torch.long)
    owner = torch.full((len(examples), width), -1, dtype=torch.long)
    for r, e in enumerate(examples):
        n = len(e.input_ids)
        ids[r, :n] = torch.tensor(e.input_ids)
        targets[r, :n] = torch.tensor(shifted_targets(e.labels))
        mask[r, :n] = 1
        owner[r, :n] = r
    return Batch(ids, targets, None, mask, int(mask.sum()), int((targets != IGNORE).sum()), owner)


def collate_packed(
    examples: list[TokenizedExample], max_length: int, pad_id: int, flat: bool = False, share_prefixes: bool = False
) -> Batch:
    """Pack into as few rows of max_length as fit, every row as wide as the fullest.

    `flat` (for a model with per-example attention): when those rows would not come out equally full,
    one row holding every example instead, so no padding is computed at all. Equally full rows stay
    (e.g. examples cut to max_length, one per row): the same tokens, and one batched attention call.
    `share_prefixes` (per-example attention too): when some examples begin with the same untrained
    tokens, one row in which each such prefix appears once (`collate_shared_prefixes`).
    """
    if share_prefixes:
        groups = prefix_groups([e.input_ids for e in examples], [trained_from(e) for e in examples])
        if any(len(members) > 1 for _, members in groups):
            return collate_shared_prefixes(examples, groups)
    lengths = [len(e.input_ids) for e in examples]
    rows = pack_examples(lengths, max_length)
    if flat and len({sum(lengths[i] for i in row) for row in rows}) > 1:
        rows = [list(range(len(examples)))]
    width = max(sum(lengths[i] for i in row) for row in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    targets = torch.full((len(rows), width), IGNORE, dtype=torch.long)
    positions = torch.zeros((len(rows), width), dtype=torch.long)
    owner = torch.full((len(rows), width), -1, dtype=torch.long)
    real = 0
    for r, row in enumerate(rows):
        at = 0
        for i in row:
            e = examples[i]
            n = len(e.input_ids)
            ids[r, at : at + n] = torch.tensor(e.input_ids)
            targets[r, at : at + n] = torch.tensor(shifted_targets(e.labels))
            positions[r, at : at + n] = torch.arange(n)
            owner[r, at : at + n] = i
            at += n
        real += at
        # the padding tail is its own "sequence" (positions restart at 0), isolated like the rest
        positions[r, at:] = torch.arange(width - at)
    return Batch(ids, targets, positions, None, real, int((targets != IGNORE).sum()), owner)


MIN_SHARED = 8  # tokens: a shorter common prefix is not worth a segment of its own


def trained_from(e: TokenizedExample) -> int:
    """Index of the first token the example trains on (its length if none)."""
    return next((i for i, label in enumerate(e.labels) if label != IGNORE), len(e.labels))


def common_untrained(a: list[int], a_trained: int, b: list[int], b_trained: int) -> int:
    """How many leading tokens two sequences share before either has a trained label (at a_trained,
    b_trained): the prompt they both continue."""
    limit = min(len(a), len(b), a_trained, b_trained)
    n = 0
    while n < limit and a[n] == b[n]:
        n += 1
    return n


def prefix_groups(
    ids: list[list[int]], trained: list[int], min_shared: int = MIN_SHARED
) -> list[tuple[int, list[int]]]:
    """Group sequences that begin with the same untrained tokens, so each group's prefix runs once.

    Returns [(s, members)]: groups in the order of their first member, members ascending, s the tokens
    the group shares (0 for a sequence alone). `trained[i]` is where sequence i's first trained label
    is. s stops one token short of what the members have in common before any of them trains: every
    member restarts from its own copy of that last common token, whose output predicts the member's
    own next token, so no shared position has a target.

    Sorted by their untrained beginnings, sequences with long common prefixes sit next to each other;
    the sorted list is cut into runs that save the most tokens in all (k members sharing s save
    (k - 1) s; a run shares the least its neighbours have in common, and at least `min_shared`). The
    result does not depend on the input order.
    """
    order = sorted(range(len(ids)), key=lambda i: (ids[i][: trained[i]], i))
    # what neighbours would share: their common untrained tokens less the one each restarts from
    link = [common_untrained(ids[a], trained[a], ids[b], trained[b]) - 1 for a, b in zip(order, order[1:])]
    # best[j]: the most tokens saved over order[:j]; cut[j]: where its last run starts
    best, cut = [0] * (len(order) + 1), [0] * (len(order) + 1)
    for j in range(1, len(order) + 1):
        best[j], cut[j] = best[j - 1], j - 1  # order[j - 1] alone
        s = None
        for i in range(j - 2, -1, -1):  # the run order[i:j]
            s = link[i] if s is None else min(s, link[i])
            if s < min_shared:
                break
            if best[i] + (j - i - 1) * s > best[j]:
                best[j], cut[j] = best[i] + (j - i - 1) * s, i
    groups, j = [], len(order)
    while j:
        i = cut[j]
        run = order[i:j]
        groups.append((min(link[i : j - 1]) if len(run) > 1 else 0, sorted(run)))
        j = i
    return sorted(groups, key=lambda g: g[1][0])


def collate_shared_prefixes(examples: list[TokenizedExample], groups: list[tuple[int, list[int]]]) -> Batch:
    """One row, no padding, each group's shared prefix once (groups from `prefix_groups`):

        row:        [ prefix t_0..t_s-1 | a_s .. a_m-1 | b_s .. b_n-1 | c_0 .. c_k-1 ]
        positions:    0 .. s-1            s .. m-1       s .. n-1       0 .. k-1
        attends:      causal              prefix + itself               itself

    An example's segment whose positions start at s > 0 sees the first s tokens of the last segment
    that started at 0 (`models.attention`), so every token's hidden state is what it would be in its
    own sequence: the same loss and gradients as one example per row, with (k - 1)·s fewer tokens
    through the model for a group of k. Prefix positions have no targets (their labels are IGNORE up
    to s), and num_tokens counts the examples' own tokens, as the unshared layouts do.
    """
    ids: list[int] = []
    targets: list[int] = []
    positions: list[int] = []
    owner: list[int] = []
    for s, members in groups:
        if s:
            lead = examples[members[0]]
            ids += lead.input_ids[:s]
            targets += shifted_targets(lead.labels)[:s]
            positions += range(s)
            owner += [-1] * s
        for i in members:
            e = examples[i]
            n = len(e.input_ids)
            ids += e.input_ids[s:]
            targets += shifted_targets(e.labels)[s:]
            positions += range(s, n)
            owner += [i] * (n - s)
    row = lambda values: torch.tensor([values], dtype=torch.long)  # noqa: E731
    return Batch(
        row(ids),
        row(targets),
        row(positions),
        None,
        sum(len(e.input_ids) for e in examples),
        sum(t != IGNORE for t in targets),
        row(owner),
    )


def collate_groups(examples: list[TokenizedExample], group_size: int, pad_id: int, share_prompt: bool) -> Batch:
    """Completions sampled `group_size` to a prompt (prompt-major, each example its prompt + completion).

    `share_prompt` (a model with per-example attention, models/attention.py): one row in which each
    group's prompt appears once and each completion continues it (`collate_shared_prefixes`):

        row:        [ prompt p_0..p_P-2 | p_P-1 c1_1..c1_n | p_P-1 c2_1..c2_m | ... | next prompt ... ]
        positions:    0 .. P-2            P-1 .. P-1+n       P-1 .. P-1+m

    every token's hidden state what it is in its own sequence, with (K - 1)·(P - 1) fewer tokens per
    group. Otherwise one completion per padded row. Example ids are the examples' indices either way.
    """
    if not share_prompt:
        return collate_padded(examples, pad_id)
    groups = []
    for start in range(0, len(examples), group_size):
        members = list(range(start, min(start + group_size, len(examples))))
        lead = examples[start]
        shared = min(shared_prefix_length(lead, examples[i]) for i in members)
        groups.append((max(0, shared - 1), members))  # each member restarts from the last prompt token
    return collate_shared_prefixes(examples, groups)


def target_positions(batch: Batch, num_examples: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Where each example's targets lie in the flattened batch, in order: `index` [num_examples, L] into
    `batch.targets.reshape(-1)` and `mask` [num_examples, L] (L: the most targets any example has).

    A per-token tensor laid out like the batch, read as `values.reshape(-1)[index]`, holds example i's
    tokens in row i from column 0 on, whatever the layout (padded, packed, prompts shared): a loss that
    works row by row sees the same inputs from each.
    """
    flat = batch.targets.reshape(-1)
    where = (flat != IGNORE).nonzero().squeeze(1)  # ascending: an example's targets in their order
    owner = batch.example_ids.reshape(-1)[where]
    owner, order = torch.sort(owner, stable=True)
    where = where[order]
    counts = torch.bincount(owner, minlength=num_examples)
    rank = torch.arange(len(where), device=flat.device) - (torch.cumsum(counts, 0) - counts)[owner]
    width = max(1, int(counts.max()))
    index = torch.zeros((num_examples, width), dtype=torch.long, device=flat.device)
    mask = torch.zeros((num_examples, width), dtype=torch.bool, device=flat.device)
    index[owner, rank] = where
    mask[owner, rank] = True
    return index, mask


def collate(
    examples: list[TokenizedExample],
    packing: bool,
    max_length: int,
    pad_id: int,
    flat: bool = False,
    share_prefixes: bool = False,
) -> Batch:
    if not packing:
        return collate_padded(examples, pad_id)
    return collate_packed(examples, max_length, pad_id, flat, share_prefixes)


def shared_prefix_length(a: TokenizedExample, b: TokenizedExample) -> int:
    """Tokens two sequences share before either has a trained label: the prompt they both continue."""
    return common_untrained(a.input_ids, trained_from(a), b.input_ids, trained_from(b))


def collate_shared_prompt(chosen: list[TokenizedExample], rejected: list[TokenizedExample], pad_id: int) -> Batch:
    """One row per pair: the prompt once, then the chosen reply, then the rejected reply.

        row:       [ prompt p_0..p_P-1 | chosen c_1..c_C | p_P-1 r_1..r_R ]
        positions:   0 .. P-1            P .. P+C-1        P-1 .. P-1+R
        attends:     causal              prompt + itself   p_0..p_P-2 + itself

    The rejected segment restarts from a copy of the last prompt token (whose output predicts r_1)
    and sees the shared prompt but never the chosen reply, so every token's hidden state is exactly
    what it would be in its own sequence, while the prompt (often half the tokens) is computed once.
    Example ids: chosen i -> i, rejected i -> n + i, as in collate([*chosen, *rejected]). Rows are padded
    to the longest pair and attend over its whole width: for models without per-example attention; the
    others take `collate_pair_prompts`.
    """
    n = len(chosen)
    starts = [max(0, shared_prefix_length(c, r) - 1) for c, r in zip(chosen, rejected)]
    lengths = [len(c.input_ids) + len(r.input_ids) - s for c, r, s in zip(chosen, rejected, starts)]
    width = max(lengths)
    ids = torch.full((n, width), pad_id, dtype=torch.long)
    targets = torch.full((n, width), IGNORE, dtype=torch.long)
    positions = torch.zeros((n, width), dtype=torch.long)
    owner = torch.full((n, width), -1, dtype=torch.long)
    mask = torch.tril(torch.ones(width, width, dtype=torch.bool)).repeat(n, 1, 1)
    for b, (c, r, s) in enumerate(zip(chosen, rejected, starts)):
        lc, lr = len(c.input_ids), len(r.input_ids) - s
        ids[b, :lc] = torch.tensor(c.input_ids)
        targets[b, :lc] = torch.tensor(shifted_targets(c.labels))
        positions[b, :lc] = torch.arange(lc)
        owner[b, :lc] = b
        ids[b, lc : lc + lr] = torch.tensor(r.input_ids[s:])
        targets[b, lc : lc + lr] = torch.tensor(shifted_targets(r.labels)[s:])
        positions[b, lc : lc + lr] = torch.arange(s, s + lr)
        owner[b, lc : lc + lr] = n + b
        mask[b, lc:, s:lc] = (
            False  # the rejected reply never sees the chosen one (nor the prompt copy it restarts from)
        )
        pad = torch.arange(lc + lr, width)
        mask[b, pad, :] = False
        mask[b, pad, pad] = True  # padding attends to itself only (no empty softmax rows)
    return Batch(ids, targets, positions, mask[:, None], sum(lengths), int((targets != IGNORE).sum()), owner)


def collate_pair_prompts(chosen: list[TokenizedExample], rejected: list[TokenizedExample]) -> Batch:
    """n pairs in one row, no padding, each pair's prompt once and both replies continuing it, for a model
    with per-example attention (models/attention.py; `collate_shared_prefixes` with a group per pair):

        row:        [ prompt p_0..p_P-2 | p_P-1 c_1..c_C | p_P-1 r_1..r_R | next pair's prompt ... ]
        positions:    0 .. P-2            P-1 .. P-1+C     P-1 .. P-1+R     0 ..

    Every token's hidden state is what it is in its own sequence, and attention costs Σ segment² rather
    than `collate_shared_prompt`'s rows padded to the longest pair; the positions carry the layout, which
    also keeps a sliding window exact. Example ids: chosen i -> i, rejected i -> n + i; num_tokens counts
    the tokens the row holds, as `collate_shared_prompt`'s do (each prompt once).
    """
    n = len(chosen)
    groups = [(max(0, shared_prefix_length(c, r) - 1), [i, n + i]) for i, (c, r) in enumerate(zip(chosen, rejected))]
    row = collate_shared_prefixes(chosen + rejected, groups)
    return replace(row, num_tokens=row.input_ids.shape[1])


def collate_pairs(
    chosen: list[TokenizedExample],
    rejected: list[TokenizedExample],
    packing: bool,
    max_length: int,
    pad_id: int,
    flat: bool = False,
) -> Batch:
    """Both sides of n pairs for one forward; example ids: chosen i -> i, rejected i -> n + i.

    Default: each pair's prompt computed once, in one row with no padding for a model with per-example
    attention (`flat`: `collate_pair_prompts`), else one padded row per pair under a 4-D mask
    (`collate_shared_prompt`); `packing`: the 2n sequences packed into rows.
    """
    if packing:
        return collate_packed(chosen + rejected, max_length, pad_id, flat)
    if flat:
        return collate_pair_prompts(chosen, rejected)
    return collate_shared_prompt(chosen, rejected, pad_id)
