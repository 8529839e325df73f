#!/usr/bin/env python3
"""Build the bundled DPO demo dataset: support-reply tone (deterministic, stdlib only).

Writes ``tone_train.jsonl`` (600 pairs) and ``tone_heldout.jsonl`` (120 pairs)
to ``src/tunesmith/demo/data/`` (or ``--out DIR``). Every row is a preference
pair in the common prompt/chosen/rejected format::

    {"prompt": [{"role": "system", "content": SYSTEM},
                {"role": "user", "content": <customer message>}],
     "chosen": <reply>, "rejected": <reply>}

The task DPO teaches here is a TONE, not a fact: given a short synthetic
customer-support message (refund, late delivery, broken or wrong item, login
trouble, billing error, cancellation, address change, product question), prefer

* chosen   -- courteous, concise and actionable: an optional brief greeting or
  acknowledgement (by name when the customer signed one), ONE concrete next step
  with specifics copied from the message (the order id ``ORD-12345`` whenever the
  customer gave one, the product) and a timeframe, an optional polite close;
  1-3 sentences.
* rejected -- alternately (exactly half each, before shuffling):
  curt    -- dismissive, 1-2 short sentences, no help ("Wait like everyone else.");
  rambling -- long-winded: repeated apologies, off-topic digressions, vague
  non-answers, and never a concrete step, order id or timeframe.

Messages and replies are assembled from many templates with slot filling (names,
products, order ids, timeframes), so that a model has to learn the tone rather
than memorise strings. Rows are redrawn (and rambling replies shortened) when a
stdlib token estimate exceeds the budget, which keeps prompt+reply within 128
SmolLM2 chat-template tokens; ``--check`` verifies the real token counts with the
SmolLM2-135M-Instruct tokenizer (not needed to build).

Held-out rows use a different seed and never repeat a training customer message.
Running the script twice produces byte-identical files.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = ROOT / "src" / "tunesmith" / "demo" / "data"
TRAIN_FILE = "tone_train.jsonl"
HELDOUT_FILE = "tone_heldout.jsonl"
N_TRAIN = 600
N_HELDOUT = 120
TRAIN_SEED = 20240917
HELDOUT_SEED = 515151
SYSTEM = "You are a customer support agent. Reply to the customer."
MAX_TOKENS = 128  # prompt + reply, with the SmolLM2 chat template (checked by --check and the tests)
# Stdlib proxy for the token budget (see _est_tokens): the system turn and chat markup cost TEMPLATE_TOKENS;
# the estimate of customer message + reply must leave TOKEN_MARGIN for estimation error.
TEMPLATE_TOKENS = 29
TOKEN_MARGIN = 8
MAX_USER_TOKENS = 28
MAX_CHOSEN_TOKENS = 48

# --------------------------------------------------------------------------
# Vocabulary (ASCII only)
# --------------------------------------------------------------------------

NAMES = """
Priya Arjun Kavya Rohan Meera Wei Mei Haruto Yuki Kenji Hana Linh Minh Ahmed Fatima
Omar Layla Yusuf Elif Emre Reza Leila Ngozi Emeka Kwame Ama Sipho Wanjiru Mateo Sofia
Diego Lucia Camila Joao Rafael Elena Liam Olivia Noah Emma Ava Ethan Mia Lucas Chloe
James Sarah Daniel Hannah Laura Marco Giulia Pierre Camille Hugo Lena Jonas Astrid Lars
Piotr Olga Ivan Irina Kai Malia Nikos Eleni
""".split()

PRODUCTS = [
    "Pulse headset",
    "Nimbus Watch",
    "AeroBook laptop",
    "Drift speaker",
    "Zenith monitor",
    "Orbit mouse",
    "Strata keyboard",
    "VoltCharge power bank",
    "Halo doorbell",
    "Lumen desk lamp",
    "BrewMaster coffee maker",
    "PureAir purifier",
    "CloudRest pillow",
    "IronClad skillet",
    "SwiftVac vacuum",
    "Glide chair",
    "Summit tent",
    "Nomad backpack",
    "Trailblazer jacket",
    "Breeze yoga mat",
]

TIMEFRAMES = [
    "3-5 business days",
    "5-7 business days",
    "2 business days",
    "3 business days",
    "5 business days",
    "a week",
]
SHORT_TIMEFRAMES = ["24 hours", "48 hours", "one business day", "2 business days"]
DAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday"]
COLOURS = ["black, grey and navy", "white and sage green", "black and sand", "charcoal, red and blue"]

# --------------------------------------------------------------------------
# Customer messages
#
# {product}: a catalog product; {oref}: " (order ORD-12345)" or "" (inline order reference).
# Categories with an order take an order id with probability ORDER_P; it is written inline
# ({oref}) or as a separate sentence.
# --------------------------------------------------------------------------

CATEGORIES = [
    "refund",
    "late_delivery",
    "broken_item",
    "wrong_item",
    "login",
    "billing",
    "cancel_order",
    "address_change",
    "product_question",
]
ORDER_P = {
    "refund": 0.8,
    "late_delivery": 0.85,
    "broken_item": 0.75,
    "wrong_item": 0.8,
    "login": 0.0,
    "billing": 0.7,
    "cancel_order": 0.85,
    "address_change": 0.85,
    "product_question": 0.0,
}

MESSAGES = {
    "refund": [
        "I'd like a refund for the {product}{oref}.",
        "Can I get my money back for the {product}{oref}? It's not what I expected.",
        "I returned the {product}{oref} last week and still haven't seen my refund.",
        "Please refund my {product}{oref}, I changed my mind.",
        "The {product}{oref} is much smaller than it looked online. How do I get a refund?",
        "I sent back the {product}{oref} ten days ago. Where is my refund?",
    ],
    "late_delivery": [
        "My {product}{oref} was due three days ago and still hasn't arrived.",
        "Where is my {product}{oref}? The tracking hasn't moved since Monday.",
        "The {product} I ordered{oref} is late. When will it arrive?",
        "Tracking says my {product}{oref} was delivered, but I never got it.",
        "I paid for express shipping on the {product}{oref} and it's a week late.",
        "Any news on my {product}{oref}? It should have been here by now.",
    ],
    "broken_item": [
        "My {product}{oref} arrived broken.",
        "The {product}{oref} stopped working after two days.",
        "The {product}{oref} came damaged in the box.",
        "My new {product}{oref} won't turn on at all.",
        "The {product}{oref} fell apart the first time I used it.",
        "Part of my {product}{oref} is cracked straight out of the box.",
    ],
    "wrong_item": [
        "I ordered the {product}{oref} but received something else.",
        "You sent me the wrong colour of the {product}{oref}.",
        "The box said {product}{oref} but there was a different item inside.",
        "I got someone else's parcel instead of my {product}{oref}.",
        "My order{oref} was for the {product}, but you sent the wrong size.",
    ],
    # (message, topic): the chosen reply fixes the problem described.
    "login": [
        ("I can't log in to my account.", "password"),
        ("It says my password is wrong, but I haven't changed it.", "password"),
        ("The password reset email never arrives.", "reset_email"),
        ("I've asked for a password reset three times and got nothing.", "reset_email"),
        ("My account is locked after too many login attempts.", "locked"),
        ("It says my account is locked. How do I get back in?", "locked"),
        ("Two-factor codes aren't reaching my phone, so I'm stuck at the login screen.", "two_factor"),
        ("I got a new phone and now I can't get past two-factor.", "two_factor"),
        ("I keep getting logged out and can't get back in.", "sessions"),
        ("The sign-in page just spins and never loads.", "sessions"),
    ],
    "billing": [
        "I was charged twice for the {product}{oref}.",
        "My card was billed more than the sale price for the {product}{oref}.",
        "There's a charge for the {product}{oref} on my statement that I didn't make.",
        "I was billed for the {product}{oref} even though I cancelled it.",
        "The {product}{oref} was charged at full price instead of with my discount code.",
    ],
    "cancel_order": [
        "Please cancel my order for the {product}{oref}.",
        "I ordered the {product}{oref} by mistake. Can you cancel it?",
        "Can I still cancel the {product}{oref}? I found it cheaper elsewhere.",
        "I no longer need the {product}{oref}, please cancel it.",
        "I accidentally ordered the {product} twice{oref}. Please cancel one.",
    ],
    "address_change": [
        "I need to change the delivery address for my {product}{oref}.",
        "I moved last week. Can you send the {product}{oref} to my new address?",
        "I typed the wrong street number for the {product}{oref}. Can you fix it?",
        "Can the {product}{oref} go to my office instead of my home?",
    ],
    # (question template, answer key): the chosen reply answers the question asked.
    "product_question": [
        ("Does the {product} come with a warranty?", "warranty"),
        ("Is the {product} covered if it breaks?", "warranty"),
        ("What colours does the {product} come in?", "colours"),
        ("Is the {product} available in other colours?", "colours"),
        ("Do you ship the {product} to Canada?", "shipping"),
        ("How long does delivery take for the {product}?", "shipping"),
        ("Can I return the {product} if it doesn't suit me?", "returns"),
        ("What is your return policy for the {product}?", "returns"),
        ("Can you gift wrap the {product}?", "gift"),
    ],
}

GREETINGS = ["Hi,", "Hello,", "Hey,", "Hi there,", "Hello support,", "Good morning,", "Dear support,"]
INTROS = ["This is {n}.", "My name is {n}.", "{n} here.", "I'm {n}."]
SIGNOFFS = ["Thanks, {n}", "Thank you, {n}", "Regards, {n}", "Best, {n}", "Cheers, {n}", "- {n}"]
ANON_SIGNOFFS = ["Thanks.", "Thank you.", "Thanks in advance.", "Please help."]
ORDER_INLINE = [" (order {id})", " ({id})", " from order {id}", " (order #{id})"]
ORDER_SENTENCES = [
    "Order number: {id}.",
    "My order number is {id}.",
    "The order is {id}.",
    "Order {id}.",
    "It's order {id}.",
]
EXTRA = [
    "This is the second time I've written.",
    "I'm quite frustrated.",
    "I've been a customer for years.",
    "Hope you can help.",
    "I need this sorted soon.",
    "I already checked the FAQ.",
]

# --------------------------------------------------------------------------
# Chosen replies: [opener] + action + [close], 1-3 sentences.
#
# {hi}: "Hi Priya" / "Hi there"; {nc}: ", Priya" / "" (name after a comma).
# {ref}: "order ORD-12345" / "your order"; {Ref}: capitalised; {id}: the bare id.
# Actions are (text, when): when = "order" (needs an id), "noorder" (only without one) or None.
# --------------------------------------------------------------------------

OPENERS = [
    "{hi}, thanks for reaching out.",
    "Thanks for letting us know{nc}.",
    "{hi}, I'm sorry for the trouble.",
    "Thanks for your message{nc}.",
    "Sorry about that{nc}.",
    "{hi}, thanks for getting in touch.",
    "I understand{nc}, and I'm sorry.",
    "Thank you for your patience{nc}.",
    "{hi}, I can help with that.",
    "Happy to help{nc}.",
]

CLOSES = [
    "Let us know if you need anything else.",
    "Thanks for your patience.",
    "Have a great day.",
    "We're here if you have any questions.",
    "Thanks for shopping with us.",
    "Just reply here if anything changes.",
    "Sorry again for the hassle.",
    "Thank you for bearing with us.",
]

ACTIONS = {
    "refund": [
        ("I've started a refund for the {product} on {ref}; it will reach your card within {tf}.", None),
        ("The refund for {ref} is approved and will show on your statement within {tf}.", "order"),
        ("I've emailed you a prepaid return label for the {product}, and we refund within {tf} of receiving it.", None),
        ("The refund for the {product} ({id}) is now processing and should arrive within {tf}.", "order"),
        ("Please reply with your order number and I'll start the refund for the {product} today.", "noorder"),
    ],
    "late_delivery": [
        ("I've checked {ref}: the {product} is with the courier and should arrive by {day}.", None),
        (
            "I've asked the courier to trace {ref}, and if nothing reaches you by {day}, "
            "we'll send a new {product} free.",
            None,
        ),
        ("{Ref} was held at the depot, so I've upgraded it to express and the {product} arrives by {day}.", "order"),
        ("I've opened a trace on {ref} and will email you an update within {stf}.", "order"),
        ("Please reply with your order number so I can trace the {product} with the courier today.", "noorder"),
    ],
    "broken_item": [
        ("I've arranged a free replacement {product} for {ref}; it ships within {stf}.", None),
        ("Please reply with a photo of the damage and I'll send a replacement {product} within {stf}.", None),
        ("I've emailed you a return label for the {product}, and a replacement ships as soon as it's scanned.", None),
        ("I've logged a warranty claim for {ref}, and a new {product} will be with you within {tf}.", "order"),
        ("I've refunded the {product} on {ref} in full; you'll see it within {tf}, no need to send it back.", "order"),
    ],
    "wrong_item": [
        ("I've shipped the correct {product} for {ref} by express; it should arrive by {day}.", None),
        ("I've emailed a return label for the wrong item, and the right {product} arrives within {tf}.", None),
        ("The right {product} for {ref} ships today, and you can keep the other item.", "order"),
        ("Please reply with your order number and I'll send the right {product} by express today.", "noorder"),
    ],
    "billing": [
        ("I've refunded the extra charge on {ref}; it will show on your card within {tf}.", "order"),
        ("I've corrected the price on {ref} and refunded the difference, which arrives within {tf}.", "order"),
        ("I've reversed the charge for the {product}; expect it back on your statement within {tf}.", None),
        (
            "Please reply with the charge date and the last four digits of the card, and I'll trace the "
            "{product} payment today.",
            "noorder",
        ),
        (
            "I've flagged the charge on {ref} for our billing team, and you'll get a confirmed refund within {stf}.",
            "order",
        ),
    ],
    "cancel_order": [
        ("I've cancelled {ref} for the {product}, and you won't be charged.", None),
        ("{Ref} for the {product} is cancelled, and any payment returns to your card within {tf}.", "order"),
        (
            "The {product} had already shipped, so I've emailed a free return label and will refund you "
            "once it's back.",
            None,
        ),
        ("Please reply with your order number and I'll cancel the {product} right away.", "noorder"),
        ("I've stopped {ref} before dispatch, so the {product} won't ship and nothing is charged.", "order"),
    ],
    "address_change": [
        ("Please reply with the new address and I'll update {ref} before the {product} ships.", None),
        ("I've put {ref} on hold; send me the new address within {stf} and I'll update it.", "order"),
        ("I've paused the {product} on {ref}, so just reply with the correct address and it ships {when}.", "order"),
        ("Please reply with your order number and the new address, and I'll redirect the {product} today.", "noorder"),
    ],
}

LOGIN_ACTIONS = {
    "password": [
        "I've sent a password reset link to the email on your account; it's valid for 30 minutes.",
        "Please use the 'Forgot password' link on the sign-in page, and the reset email arrives within 5 minutes.",
        "I've sent a one-time sign-in code to your email; it expires in 15 minutes.",
    ],
    "reset_email": [
        "I've resent the reset link from a new address; it arrives within 5 minutes, so please check spam too.",
        "I've sent a one-time sign-in code to your email instead; it expires in 15 minutes.",
        "Our reset emails were delayed today; I've sent a fresh link that's valid for 30 minutes.",
    ],
    "locked": [
        "I've unlocked your account, so you can sign in now; please reset your password afterwards.",
        "Your account unlocks automatically within 30 minutes, or use the reset link I've just emailed you.",
    ],
    "two_factor": [
        "I've reset your two-factor settings, so you can now sign in with a code sent by email.",
        "I've switched your two-factor codes to email for 24 hours, so you can sign in and add your new phone.",
    ],
    "sessions": [
        "I've cleared your old sessions; please sign in again and you should stay signed in.",
        "We fixed a sign-in fault an hour ago; please clear your browser cache and sign in again.",
    ],
}

ANSWERS = {
    "warranty": [
        "Yes, the {product} comes with a two-year warranty; just keep your receipt.",
        "The {product} has a two-year warranty, and you can file a claim from your account page.",
    ],
    "colours": [
        "The {product} comes in {colours}; you can pick one on the product page.",
        "Yes, the {product} is available in {colours}.",
    ],
    "shipping": [
        "Yes, we ship the {product} to Canada, and delivery takes 5-7 business days.",
        "The {product} ships within one business day and usually arrives in 3-5 business days.",
    ],
    "returns": [
        "You can return the {product} within 30 days for a full refund, and the return label is free.",
        "Yes, returns on the {product} are free within 30 days; start one from your orders page.",
    ],
    "gift": [
        "Yes, choose gift wrap at checkout for the {product}; it costs $3 and includes a card.",
        "We can gift wrap the {product}: just tick the gift option at checkout.",
    ],
}

# --------------------------------------------------------------------------
# Rejected replies
# --------------------------------------------------------------------------

CURT = [
    "Not our problem. Check the website.",
    "Wait like everyone else.",
    "Read the FAQ.",
    "We can't help with that.",
    "Figure it out yourself.",
    "Check your email. It's all there.",
    "Nothing we can do.",
    "Try again later.",
    "Policy is policy.",
    "Already answered. Look it up.",
    "That's how it works. Deal with it.",
    "Not my department.",
    "Contact someone else.",
    "We're busy. Be patient.",
]
CURT_BY_CATEGORY = {
    "refund": ["No refunds. Read the policy.", "You bought it, you keep it."],
    "late_delivery": ["It'll get there when it gets there.", "Take it up with the courier."],
    "broken_item": ["Probably your fault. Read the manual.", "It worked when it left us."],
    "wrong_item": ["Just keep it.", "Looks right to me."],
    "login": ["Reset your password. It's not hard.", "Sounds like you forgot it."],
    "billing": ["The charge is correct.", "Call your bank, not us."],
    "cancel_order": ["Too late. It's yours now.", "Orders can't be changed. Read the terms."],
    "address_change": ["You should have typed it right.", "Can't change it now."],
    "product_question": ["It's on the product page.", "Just search for it."],
}
CURT_PREFIXES = ["", "", "", "Look, ", "Honestly, ", "Ugh. ", "Again? "]

RAMBLE_OPEN = [
    "Oh no, I'm so sorry, I'm really so sorry to hear this, truly, and I apologise.",
    "Hello and thank you so much for writing in, and let me say how very, very sorry I am.",
    "Gosh, I'm sorry, we're all so sorry about this, it really isn't what we want at all.",
    "Well, first of all, apologies, many apologies, I'm honestly so sorry you had to write.",
    "Oh dear, I do apologise, and I apologise again, this is not the experience we hope for.",
    "Thank you for your message, and I'm sorry, so terribly sorry, about all of this.",
    "I'm so sorry! Really, I can't say it enough, and I know sorry doesn't fix much.",
    "Hi, hello, sorry, I'm so sorry about all of this, it's just the worst and I feel bad.",
]
RAMBLE_DIGRESS = [
    "The {product} is one of my favourites actually, my cousin has one and loves it.",
    "It's been such a busy week here, what with the weather and the new coffee machine.",
    "Funnily enough, I was saying to a colleague this morning how these things come in waves.",
    "We've been reorganising a lot lately, new systems, new people, it's all been quite a lot.",
    "I remember a similar case when I first started here, though the details were different.",
    "These things happen more than you'd think, especially around the holidays.",
    "The {product} has such an interesting story, the design team spent ages on the colours.",
    "I was reading about delivery networks the other day, it's all very complicated really.",
    "My own {product} once did something odd too, although it was probably just me.",
]
RAMBLE_VAGUE = [
    "I'm not sure what the next step is, but hopefully it sorts itself out somehow.",
    "I'll definitely look into it at some point, or someone will, and we'll see.",
    "There might be something we can do, or there might not, it's hard to say really.",
    "Perhaps it's worth waiting a bit to see what happens, these things often resolve themselves.",
    "I'll pass it along to the relevant team, although I'm not quite sure which team that is.",
    "Maybe try again later, or not, whatever feels right, there's no real rush either way.",
    "I can't promise anything, but I'm sure it'll all work out eventually, it usually does.",
    "We're looking at lots of cases like this, so it could take a while, hard to say.",
]
RAMBLE_CLOSE = [
    "Again, I'm so sorry, truly sorry, for any inconvenience this may have caused you.",
    "Sorry again, and sorry for the long message, I do tend to go on a bit!",
    "Once more, my sincerest apologies for all of this, it really is a shame.",
    "Apologies again, I really am very sorry, and I hope you can forgive us.",
    "So sorry again, and thanks for bearing with me through all of that.",
    "Sorry, sorry, sorry, and have a lovely day, whatever you get up to.",
    "Anyway, apologies again for everything, we really do feel terrible.",
    "Sorry once more, I hope the rest of your week is better than this.",
]


# --------------------------------------------------------------------------
# Rendering
# --------------------------------------------------------------------------


def _cap(s: str) -> str:
    return s[:1].upper() + s[1:]


def _est_tokens(text: str) -> float:
    """Rough SmolLM2 token count: ~4 characters a token, digits one token each."""
    digits = sum(c.isdigit() for c in text)
    return (len(text) - digits) / 4 + digits


def _reply_budget(msg: str) -> float:
    return MAX_TOKENS - TEMPLATE_TOKENS - TOKEN_MARGIN - _est_tokens(msg)


def _customer(rng: random.Random, category: str) -> tuple[str, dict]:
    """A customer message and the details a good reply may reference."""
    product = rng.choice(PRODUCTS)
    order_id = f"ORD-{rng.randrange(10000, 100000)}" if rng.random() < ORDER_P[category] else None
    name = rng.choice(NAMES) if rng.random() < 0.6 else None
    topic = None
    if category in ("product_question", "login"):
        template, topic = rng.choice(MESSAGES[category])
    else:
        template = rng.choice(MESSAGES[category])
    inline = order_id is not None and "{oref}" in template and rng.random() < 0.5
    main = template.format(product=product, oref=rng.choice(ORDER_INLINE).format(id=order_id) if inline else "")

    middle = [main]
    if order_id is not None and not inline:
        middle.append(rng.choice(ORDER_SENTENCES).format(id=order_id))
    if rng.random() < 0.2:
        middle.insert(rng.randrange(len(middle) + 1), rng.choice(EXTRA))
    parts = []
    name_mode = rng.choice(["intro", "signoff"]) if name else None
    if name_mode == "intro":
        if rng.random() < 0.5:
            parts.append(rng.choice(GREETINGS))
        parts.append(rng.choice(INTROS).format(n=name))
    elif rng.random() < 0.5:
        parts.append(rng.choice(GREETINGS))
    parts.extend(middle)
    if name_mode == "signoff":
        parts.append(rng.choice(SIGNOFFS).format(n=name))
    elif rng.random() < 0.25:
        parts.append(rng.choice(ANON_SIGNOFFS))
    details = {
        "category": category,
        "product": product if "{product}" in template else None,
        "order_id": order_id,
        "name": name,
        "topic": topic,
    }
    return " ".join(parts), details


def _chosen(rng: random.Random, d: dict) -> str:
    category, product, order_id, name = d["category"], d["product"], d["order_id"], d["name"]
    slots = {
        "product": product,
        "ref": f"order {order_id}" if order_id else "your order",
        "Ref": f"Order {order_id}" if order_id else "Your order",
        "id": order_id,
        "hi": f"Hi {name}" if name else rng.choice(["Hi there", "Hello", "Hi"]),
        "nc": f", {name}" if name else "",
        "tf": rng.choice(TIMEFRAMES),
        "stf": rng.choice(SHORT_TIMEFRAMES),
        "day": rng.choice(DAYS),
        "when": rng.choice(["today", "tomorrow", "within 24 hours"]),
        "colours": rng.choice(COLOURS),
    }
    if category == "product_question":
        action = rng.choice(ANSWERS[d["topic"]])
    elif category == "login":
        action = rng.choice(LOGIN_ACTIONS[d["topic"]])
    else:
        options = [t for t, when in ACTIONS[category] if when is None or (when == "order") == (order_id is not None)]
        action = rng.choice(options)
    r = rng.random()
    openers = OPENERS if category != "product_question" else [o for o in OPENERS if "sorry" not in o.lower()]
    opener = rng.choice(openers) if r < 0.75 else None
    close = rng.choice(CLOSES) if r < 0.45 or r >= 0.9 else None

    def text() -> str:
        return " ".join(_cap(p.format(**slots)) for p in (opener, action, close) if p)

    # Drop the close, then the opener, when the reply would be too long (never the action).
    if close and _est_tokens(text()) > MAX_CHOSEN_TOKENS:
        close = None
    if opener and _est_tokens(text()) > MAX_CHOSEN_TOKENS:
        opener = None
    return text()


def _curt(rng: random.Random, d: dict) -> str:
    """One or two dismissive lines, sometimes after a sigh ("Look, ...")."""
    pool = CURT + CURT_BY_CATEGORY[d["category"]] * 2
    first = rng.choice(pool)
    prefix = rng.choice(CURT_PREFIXES)
    if prefix.endswith(", "):
        first = first[0].lower() + first[1:]
    text = prefix + first
    if rng.random() < 0.3:
        second = rng.choice(pool)
        if second != first:
            text += " " + second
    return text


def _rambling(rng: random.Random, d: dict, budget: float) -> str | None:
    """Apology + digression(s) + vague non-answer + apology, in ``budget`` estimated tokens (None: no fit).

    Starts from up to five sentences and drops middle ones until it fits; at least three stay."""
    product = d["product"] or "product"
    digressions = RAMBLE_DIGRESS if d["product"] else [t for t in RAMBLE_DIGRESS if "{product}" not in t]
    opener, close = rng.choice(RAMBLE_OPEN), rng.choice(RAMBLE_CLOSE)
    middle = [rng.choice(digressions).format(product=product), rng.choice(RAMBLE_VAGUE)]
    if rng.random() < 0.5:
        middle.reverse()
    if rng.random() < 0.5:  # a second digression, if there is room
        extra = rng.choice(digressions).format(product=product)
        if extra not in middle:
            middle.insert(rng.randrange(len(middle) + 1), extra)
    parts = [opener, *middle, close]
    while _est_tokens(" ".join(parts)) > budget and len(parts) > 3:
        del parts[1 + rng.randrange(len(parts) - 2)]
    text = " ".join(parts)
    return text if _est_tokens(text) <= budget else None


def _pair(rng: random.Random, category: str, kind: str) -> tuple[str, str, str] | None:
    """(customer message, chosen, rejected), or None when it does not fit the token budget."""
    msg, d = _customer(rng, category)
    if _est_tokens(msg) > MAX_USER_TOKENS:
        return None
    budget = _reply_budget(msg)
    chosen = _chosen(rng, d)
    rejected = _curt(rng, d) if kind == "curt" else _rambling(rng, d, budget)
    if rejected is None or _est_tokens(chosen) > min(budget, MAX_CHOSEN_TOKENS):
        return None
    return msg, chosen, rejected


def generate(n: int, seed: int, exclude: frozenset[str] | set[str] = frozenset()) -> list[dict]:
    """``n`` preference rows, balanced over categories and over curt/rambling rejected replies, with
    unique customer messages none of which is in ``exclude``."""
    rng = random.Random(seed)
    rows: list[dict] = []
    seen = set(exclude)
    while len(rows) < n:
        i = len(rows)
        category, kind = CATEGORIES[i % len(CATEGORIES)], ("curt", "rambling")[i % 2]
        pair = _pair(rng, category, kind)
        if pair is None or pair[0] in seen:
            continue
        msg, chosen, rejected = pair
        seen.add(msg)
        rows.append(
            {
                "prompt": [{"role": "system", "content": SYSTEM}, {"role": "user", "content": msg}],
                "chosen": chosen,
                "rejected": rejected,
            }
        )
    rng.shuffle(rows)
    return rows


def build(out: Path) -> dict[str, list[dict]]:
    """Write both files into ``out``; return {file name: rows}."""
    out.mkdir(parents=True, exist_ok=True)
    train = generate(N_TRAIN, TRAIN_SEED)
    train_msgs = {r["prompt"][1]["content"] for r in train}
    heldout = generate(N_HELDOUT, HELDOUT_SEED, exclude=train_msgs)
    files = {TRAIN_FILE: train, HELDOUT_FILE: heldout}
    for name, rows in files.items():
        data = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
        (out / name).write_bytes(data.encode("utf-8"))
    return files


# --------------------------------------------------------------------------
# --check: real token counts (needs tunesmith and the embedded SmolLM2 tokenizer)
# --------------------------------------------------------------------------


def token_lengths(tokenizer, rows: list[dict]) -> tuple[list[int], list[int]]:
    """Chat-template token counts of prompt+chosen and prompt+rejected for each row."""

    def render(row: dict, side: str) -> str:
        return tokenizer.apply_chat_template(
            row["prompt"] + [{"role": "assistant", "content": row[side]}], tokenize=False
        )

    lengths = []
    for side in ("chosen", "rejected"):
        texts = [render(r, side) for r in rows]
        ids = tokenizer(texts, add_special_tokens=False)["input_ids"]
        lengths.append([len(x) for x in ids])
    return lengths[0], lengths[1]


def _check(files: dict[str, list[dict]]) -> int:
    sys.path.insert(0, str(ROOT / "src"))
    from tunesmith.models import load_tokenizer, resolve_model_dir

    tok = load_tokenizer(resolve_model_dir("smollm2-135m-instruct"))
    worst = 0
    for name, rows in files.items():
        chosen, rejected = token_lengths(tok, rows)
        for side, lens in (("prompt+chosen", chosen), ("prompt+rejected", rejected)):
            print(f"{name} {side:16s} tokens min {min(lens)} median {statistics.median(lens):g} max {max(lens)}")
            worst = max(worst, max(lens))
    print(f"longest sequence: {worst} tokens (limit {MAX_TOKENS})")
    return 0 if worst <= MAX_TOKENS else 1


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output directory")
    ap.add_argument(
        "--check",
        action="store_true",
        help=f"also count tokens with the SmolLM2 tokenizer; fail if any sequence exceeds {MAX_TOKENS}",
    )
    args = ap.parse_args(argv)
    files = build(args.out)
    for name, rows in files.items():
        print(f"wrote {len(rows)} pairs to {args.out / name}")
    return _check(files) if args.check else 0


if __name__ == "__main__":
    raise SystemExit(main())
