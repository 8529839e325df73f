#!/usr/bin/env python3
"""Build the bundled ``tunesmith demo`` dataset (deterministic, stdlib only).

Writes ``support_train.jsonl`` (1200 rows) and ``support_heldout.jsonl``
(120 rows) to ``src/tunesmith/demo/data/`` (or ``--out DIR``). Every row is an
OpenAI chat example::

    {"messages": [{"role": "system", "content": SYSTEM_PROMPT},
                  {"role": "user", "content": <customer message>},
                  {"role": "assistant", "content": <json.dumps(label)>}]}

The task: turn a synthetic customer-support message into JSON with the keys
``FIELDS`` = name, order_id, product, intent, urgency. The labels are decided
before the message is written and the message is then rendered so that every
label can be read off it:

* name      -- the customer's name exactly as written (intro or sign-off), or null;
* order_id  -- always of the form ``ORD-12345``, copied verbatim, or null;
* product   -- one of ``PRODUCTS`` copied verbatim, or null;
* intent    -- decided by the wording of the main request sentence;
* urgency   -- "high" iff the message has a high cue (urgent, asap, today,
  tomorrow, tonight, !!!, as soon as possible, immediately, right away, a
  weekday deadline); "low" iff it has a low cue (no rush, no hurry, whenever
  you get a chance, take your time, can wait); otherwise "normal".

Noise (typos, lowercase, ALL CAPS words, extra spaces, emoji) is applied only
to template text, never to the name, order id, product or urgency cue, and
every rendered message is checked against its labels (``_check``).

Running the script twice produces byte-identical files.
"""

from __future__ import annotations

import argparse
import json
import random
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from tunesmith.demo.task import FIELDS, INTENTS, SYSTEM_PROMPT  # noqa: E402

DEFAULT_OUT = ROOT / "src" / "tunesmith" / "demo" / "data"
TRAIN_FILE = "support_train.jsonl"
HELDOUT_FILE = "support_heldout.jsonl"
N_TRAIN = 1200
N_HELDOUT = 120
TRAIN_SEED = 20240611
HELDOUT_SEED = 777013
MIN_WORDS, MAX_WORDS = 15, 60

# --------------------------------------------------------------------------
# Vocabulary
# --------------------------------------------------------------------------

# ASCII-only so that json.dumps (ensure_ascii) copies names verbatim.
FIRST_NAMES = """
Priya Arjun Ananya Rohan Kavya Vikram Deepa Sanjay Meera Rahul
Wei Mei Jun Hui Xin Haruto Yuki Sakura Kenji Aiko
Min-jun Seo-yeon Ji-ho Hana Tuan Linh Minh Thao Nguyen Bao
Ahmed Fatima Omar Layla Yusuf Amira Karim Noor Hassan Zainab
Mehmet Elif Emre Ayse Dariush Shirin Reza Leila Tariq Samira
Chinedu Ngozi Emeka Adaeze Kwame Ama Kofi Abena Tendai Thandiwe
Sipho Zanele Amara Oluwaseun Folake Babajide Wanjiru Njeri Achieng Jabari
Mateo Sofia Valentina Santiago Camila Diego Lucia Alejandro Isabela Javier
Joao Beatriz Rafael Mariana Thiago Gabriela Carlos Elena Pablo Ximena
Liam Olivia Noah Emma Oliver Ava Ethan Mia Lucas Chloe
James Sarah Michael Emily Daniel Hannah Benjamin Rachel Samuel Laura
Luca Giulia Marco Francesca Lorenzo Chiara Matteo Alessia Pierre Camille
Hugo Manon Louis Elodie Lukas Lena Jonas Anja Felix Greta
Sven Astrid Lars Ingrid Mikael Freya Oskar Sigrid Piotr Agnieszka
Katarzyna Tomasz Ivan Olga Dmitri Natasha Sergei Anastasia Andrei Irina
Kai Leilani Keanu Malia Tane Aroha Mateus Nikos Eleni Yannis
""".split()

SURNAMES = """
Sharma Patel Iyer Reddy Gupta Nair Mehta Singh Kapoor Banerjee
Chen Wang Li Zhang Liu Tanaka Suzuki Sato Watanabe Nakamura
Kim Park Lee Choi Jung Tran Pham Le Hoang Vu
Haddad Khalil Mansour Aziz Rahman Hussain Farouk Saleh Demir Yilmaz
Kaya Hosseini Karimi Tehrani Okafor Adeyemi Nwosu Eze Mensah Boateng
Owusu Mwangi Kamau Otieno Dlamini Ndlovu Naidoo Abebe Tesfaye Diallo
Garcia Rodriguez Martinez Hernandez Lopez Gonzalez Silva Santos Oliveira Costa
Pereira Fernandes Rossi Russo Bianchi Romano Ricci Moreau Dubois Laurent
Lefebvre Muller Schmidt Schneider Fischer Weber Wagner Becker Hansen Johansson
Nilsson Larsen Kowalski Nowak Wisniewski Ivanov Petrov Smirnov Popescu Papadopoulos
Smith Johnson Brown Taylor Wilson Anderson Thompson Walker Murphy OBrien
""".split()

# (name, category): E=electronics, H=home, A=apparel, S=software subscription.
PRODUCTS = [
    ("Pulse Buds Pro", "E"),
    ("Nimbus Smartwatch 3", "E"),
    ("Zenith 27 Monitor", "E"),
    ("VoltCharge Power Bank", "E"),
    ("Echoline Soundbar", "E"),
    ("AeroBook 14 Laptop", "E"),
    ("PixelCam 4K Webcam", "E"),
    ("Orbit Wireless Mouse", "E"),
    ("Strata Mechanical Keyboard", "E"),
    ("Halo Smart Doorbell", "E"),
    ("Drift Bluetooth Speaker", "E"),
    ("Lumen Smart Bulb", "E"),
    ("BrewMaster Coffee Maker", "H"),
    ("PureAir Purifier", "H"),
    ("CloudRest Pillow", "H"),
    ("IronClad Skillet", "H"),
    ("Frostline Mini Fridge", "H"),
    ("AquaFlow Water Filter", "H"),
    ("Cozy Knit Throw Blanket", "H"),
    ("SwiftVac Cordless Vacuum", "H"),
    ("Terra Plant Pot Set", "H"),
    ("Chef's Edge Knife Set", "H"),
    ("Glide Ergonomic Chair", "H"),
    ("Trailblazer Rain Jacket", "A"),
    ("Summit Hiking Boots", "A"),
    ("Everyday Crew T-Shirt", "A"),
    ("Nomad Travel Backpack", "A"),
    ("Breeze Running Shoes", "A"),
    ("Alpine Wool Beanie", "A"),
    ("Harbor Denim Jacket", "A"),
    ("StrideFlex Yoga Pants", "A"),
    ("PhotoForge Premium", "S"),
    ("CloudVault Pro", "S"),
    ("TaskPilot Teams", "S"),
    ("StreamBox Plus", "S"),
    ("LinguaLeap Annual", "S"),
    ("SecureShield VPN", "S"),
    ("NoteNest Plus", "S"),
    ("FitTrack Premium", "S"),
    ("BudgetBee Pro", "S"),
]
PRODUCT_NAMES = [p for p, _ in PRODUCTS]
PRODUCT_CAT = dict(PRODUCTS)

# --------------------------------------------------------------------------
# Templates
#
# {p}/{P}: product phrase (lower/upper-case first letter), either built from a
#          catalog product or a generic phrase ("my order", "the app", ...).
# {o}:     inline order reference (" (order ORD-12345)") or "".
# Each template is (text, categories): categories restricts which product
# categories it may be used with ("" = only without a product, None = any
# product the intent allows, or without one).
# --------------------------------------------------------------------------

PHYS = "EHA"
INTENT_SPEC = {
    # intent: (product categories, P(product), P(order id), generic phrases)
    "refund": (PHYS, 0.8, 0.75, ["my order", "the item", "my purchase", "what I bought"]),
    "cancel_order": (PHYS, 0.7, 0.8, ["my order", "my recent order", "this order"]),
    "shipping_status": (PHYS, 0.65, 0.8, ["my order", "my package", "my parcel"]),
    "technical_issue": ("ES", 0.85, 0.3, ["my device", "the app", "the gadget I bought"]),
    "billing": ("S", 0.6, 0.35, ["my subscription", "my plan", "my account"]),
    "account_access": ("S", 0.35, 0.08, ["my account"]),
    "product_question": (PHYS + "S", 0.88, 0.05, ["this item", "this one"]),
}

T = {
    "refund": [
        ("I'd like a refund for {p}{o}.", None),
        ("Can I get my money back for {p}{o}? It's not what I expected.", None),
        ("{P}{o} arrived damaged and I want a full refund.", None),
        ("I returned {p}{o} two weeks ago and still haven't seen the refund.", None),
        ("Please refund {p}{o}, it stopped working after two days.", "EH"),
        ("{P} doesn't fit, so I'd like to send it back for a refund.", "A"),
        ("Requesting a refund on {p}{o}. The quality is much worse than advertised.", None),
        ("How do I get refunded for {p}{o}? I changed my mind about it.", None),
        ("Still waiting on my refund for {p}{o}. The return was accepted last week.", None),
        ("You sent me the wrong color of {p}{o}. I just want my money back.", "EHA"),
        ("I want to return {p}{o} and be reimbursed to my card.", None),
        ("The refund for {p}{o} never reached my account. Could you check on it?", None),
    ],
    "cancel_order": [
        ("Please cancel {p}{o}, I ordered it by mistake.", None),
        ("I need to cancel {p}{o} before it ships.", None),
        ("Can you cancel {p}{o}? I found it cheaper elsewhere.", None),
        ("Cancel {p}{o} please. I no longer need it.", None),
        ("I accidentally ordered {p} twice{o}, please cancel one of them.", PHYS),
        ("Is it too late to cancel {p}{o}? I changed my mind.", None),
        ("Please stop {p}{o} from shipping and cancel it.", None),
        ("I'd like to cancel the order for {p}{o}, my partner already bought one.", PHYS),
        ("Could you cancel {p}{o}? The delivery date is too late for me.", None),
        ("I want to cancel {p}{o} and not be charged for it.", None),
        ("Please void {p}{o}. I ordered the wrong size.", "A"),
    ],
    "shipping_status": [
        ("Where is {p}{o}? It was supposed to arrive last week.", None),
        ("The tracking for {p}{o} hasn't updated in days.", None),
        ("Can you tell me when {p}{o} will be delivered?", None),
        ("{P}{o} still hasn't arrived.", None),
        ("Has {p}{o} shipped yet? I haven't received any tracking info.", None),
        ("The tracking says delivered but I never got {p}{o}.", None),
        ("Any update on the delivery of {p}{o}?", None),
        ("I ordered {p} ten days ago{o} and there's no sign of it.", PHYS),
        ("What's the status of the shipment for {p}{o}? It should be here by now.", None),
        ("Could you check where {p}{o} is? The courier site shows nothing.", None),
        ("{P}{o} seems stuck at the sorting center. When will it reach me?", None),
    ],
    "technical_issue": [
        ("{P}{o} won't turn on anymore.", "E"),
        ("{P} keeps crashing whenever I open it.", "S"),
        ("I'm having trouble with {p}{o}, it disconnects every few minutes.", None),
        ("{P} shows error code E42 when I try to sync.", None),
        ("After the latest update {p} stopped working properly.", None),
        ("{P} freezes and I have to restart it every time.", None),
        ("I can't get {p} to connect to my wifi.", "E"),
        ("{P} isn't syncing my data anymore.", None),
        ("Something is wrong with {p}{o}: it makes a weird noise and then shuts off.", "E"),
        ("I followed the setup guide but {p} still doesn't work.", None),
        ("The battery on {p}{o} drains in about an hour.", "E"),
        ("{P} won't load past the start screen.", "S"),
    ],
    "billing": [
        ("I was charged twice for {p} this month.", None),
        ("My card was billed for {p} after I had already paid.", None),
        ("Can you explain the extra charge on my invoice for {p}?", None),
        ("How do I update the payment method for {p}?", None),
        ("The price I was charged for {p} doesn't match the price on your site.", None),
        ("I need a copy of the invoice for {p}{o}.", None),
        ("There's a charge from you on my statement that I don't recognize.", ""),
        ("My subscription renewed at a higher price than before.", ""),
        ("Why was I billed for {p} when my free trial hasn't ended?", None),
        ("Please change the billing address on my account.", ""),
        ("My payment for {p} keeps getting declined even though my card is fine.", None),
        ("I was billed the annual rate for {p} but I chose monthly.", None),
    ],
    "account_access": [
        ("I can't log in to {p}.", None),
        ("The password reset email for {p} never arrives.", None),
        ("My account got locked after too many login attempts.", ""),
        ("I can't sign in to {p}, it says my password is wrong.", None),
        ("I lost access to the email on my account and now I can't log in.", ""),
        ("Two-factor codes aren't arriving so I'm stuck at the login screen.", ""),
        ("Someone changed my password and I'm locked out of {p}.", None),
        ("It says no account exists with my email, but I've been a member for years.", ""),
        ("How do I recover my account? I forgot my username.", ""),
        ("I keep getting logged out of {p} and can't get back in.", None),
        ("The login page for {p} just spins and never lets me in.", None),
    ],
    "product_question": [
        ("Does {p} come with a warranty?", PHYS),
        ("Is {p} compatible with a Mac?", "ES"),
        ("What sizes does {p} come in?", "A"),
        ("Can {p} be used outdoors?", "EA"),
        ("Before I buy, how long does the battery last on {p}?", "E"),
        ("Is {p} available in other colors?", PHYS),
        ("What's the difference between {p} and the older model?", "EH"),
        ("Do you offer a student discount on {p}?", None),
        ("Is {p} machine washable?", "A"),
        ("How many devices can I use {p} on?", "S"),
        ("Is {p} dishwasher safe?", "H"),
        ("Does {p} include a free trial before I commit?", "S"),
        ("I'm thinking of buying {p}. Does it ship internationally?", PHYS),
        ("What are the dimensions of {p}?", "EH"),
        ("Can you tell me more about {p} before I buy?", None),
        ("Do you ship to Canada, and how long does delivery usually take?", ""),
        ("Do your products come with a warranty?", ""),
        ("Do you price match other stores?", ""),
        ("Is there a size guide for your jackets?", ""),
    ],
}

# Extra sentences that keep the intent and carry no urgency cue.
EXTRA = {
    "refund": [
        "I still have the receipt.",
        "The box is unopened.",
        "I already printed the return label.",
        "It was a gift that didn't work out.",
        "I've attached photos of the damage.",
    ],
    "cancel_order": [
        "I placed it last night by accident.",
        "It hasn't shipped as far as I can tell.",
        "I don't want to be charged for it.",
        "I'll reorder later if needed.",
    ],
    "shipping_status": [
        "I've checked with my neighbors already.",
        "The courier website shows nothing new.",
        "I paid for express shipping.",
        "My address on the order is correct.",
    ],
    "technical_issue": [
        "I already tried turning it off and on again.",
        "I'm on the latest version.",
        "I reset it to factory settings and nothing changed.",
        "It worked fine until recently.",
    ],
    "billing": [
        "I checked my bank statement twice.",
        "I only have one account with you.",
        "I'd like this corrected on my next invoice.",
        "My card details haven't changed.",
    ],
    "account_access": [
        "I've tried resetting my password three times.",
        "I've checked my spam folder.",
        "I'm using the same email I signed up with.",
        "I cleared my browser cache already.",
    ],
    "product_question": [
        "I couldn't find this on the product page.",
        "I'm comparing a few options.",
        "It would be a gift for my sister.",
        "I want to be sure before ordering.",
    ],
}

GREETINGS = [
    "Hi,",
    "Hello,",
    "Hey,",
    "Hi there,",
    "Hello support,",
    "Dear support team,",
    "Good morning,",
    "Good afternoon,",
    "Hey there,",
    "Hiya,",
]
INTROS = [
    "This is {n}.",
    "My name is {n}.",
    "{n} here.",
    "I'm {n}.",
    "It's {n} writing.",
    "Hi, this is {n}.",
    "Hello, my name is {n}.",
]
SIGNOFFS = [
    "Thanks, {n}",
    "Thank you, {n}",
    "Regards, {n}",
    "Best, {n}",
    "Cheers, {n}",
    "- {n}",
    "Thanks!\n{n}",
    "Kind regards,\n{n}",
    "Many thanks, {n}",
    "Sincerely, {n}",
]
ANON_SIGNOFFS = ["Thanks.", "Thank you.", "Thanks in advance.", "Appreciate the help."]
FILLERS = [
    "Hope you're doing well.",
    "I've been a customer for years.",
    "I usually love your stuff.",
    "Sorry if this is the wrong place to ask.",
    "Thanks for reading.",
    "I appreciate your help.",
    "This is my first time contacting support.",
    "Let me know if you need anything else from me.",
]
ORDER_SENTENCES = [
    "Order number: {id}.",
    "My order number is {id}.",
    "The order ID is {id}.",
    "Order {id}.",
    "Ref: {id}",
    "It's order {id}.",
    "For reference, the order is {id}.",
]
ORDER_INLINE = [" (order {id})", " ({id})", ", order {id},", " from order {id}", " (order #: {id})"]

HIGH_SENTENCES = [
    "This is urgent.",
    "It's urgent, please help.",
    "Please sort this out asap.",
    "I need this resolved today.",
    "Please get back to me as soon as possible.",
    "Need an answer ASAP.",
    "Please reply right away.",
    "Please deal with this immediately.",
    "I need it by Friday for a trip.",
    "My deadline is tomorrow morning.",
    "It's a gift and the party is this Saturday.",
    "I need this fixed before Monday.",
    "URGENT, please respond.",
    "Please handle this tonight if you can.",
]
LOW_SENTENCES = [
    "No rush.",
    "No rush at all.",
    "Whenever you get a chance is fine.",
    "Reply whenever you get a chance.",
    "No hurry on this.",
    "Take your time with this.",
    "It can wait, no hurry.",
    "No rush, just curious.",
]
HIGH_CUES = [
    "urgent",
    "asap",
    "today",
    "tonight",
    "tomorrow",
    "!!!",
    "as soon as possible",
    "immediately",
    "right away",
    "monday",
    "tuesday",
    "wednesday",
    "thursday",
    "friday",
    "saturday",
    "sunday",
    "deadline",
]
LOW_CUES = ["no rush", "no hurry", "whenever you get a chance", "take your time", "can wait"]
EMOJI = ["🙏", "😊", "😩", "📦", "🙂", "😕", "🤞", "👍"]

PLACEHOLDER = re.compile(r"\{[a-zA-Z]+\}")


# --------------------------------------------------------------------------
# Noise (template text only; placeholders are protected)
# --------------------------------------------------------------------------


def _typo(rng: random.Random, word: str) -> str:
    core = re.match(r"^([A-Za-z]+)(.*)$", word)
    if not core or len(core.group(1)) < 5:
        return word
    w, rest = core.group(1), core.group(2)
    i = rng.randrange(1, len(w) - 2)
    if rng.random() < 0.5:
        w = w[:i] + w[i + 1] + w[i] + w[i + 2 :]  # swap two letters
    else:
        w = w[:i] + w[i + 1 :]  # drop a letter
    return w + rest


def _noisy(rng: random.Random, text: str) -> str:
    """Apply random surface noise to a template sentence (placeholders kept)."""
    words = text.split(" ")
    editable = [i for i, w in enumerate(words) if "{" not in w]
    if editable and rng.random() < 0.18:
        i = rng.choice(editable)
        words[i] = _typo(rng, words[i])
    if editable and rng.random() < 0.08:
        cands = [i for i in editable if len(words[i].strip(".,?!:")) >= 4]
        if cands:
            i = rng.choice(cands)
            words[i] = words[i].upper()
    text = " ".join(words)
    if rng.random() < 0.06:
        text = text.replace(" ", "  ", 1 + rng.randrange(2))
    return text


def _lower_templates(text: str) -> str:
    # Lower-case but keep placeholders intact ({P} -> {p} renders lower phrase).
    return text.lower()


# --------------------------------------------------------------------------
# Rendering
# --------------------------------------------------------------------------


def _product_phrase(rng: random.Random, product: str | None, generic: list[str], intent: str, template: str) -> str:
    if product is None:
        return rng.choice(generic)
    if PRODUCT_CAT[product] == "S":
        if intent == "product_question":
            return rng.choice(["{x}", "{x}", "a {x} subscription"]).format(x=product)
        return rng.choice(["{x}", "my {x} subscription", "my {x} plan", "{x}"]).format(x=product)
    if intent == "product_question":
        return rng.choice(["the {x}", "the {x}", "your {x}"]).format(x=product)
    forms = ["the {x}", "my {x}", "the {x}"]
    if "order" not in template.lower():
        forms.append("the {x} I ordered")
    return rng.choice(forms).format(x=product)


def _cap(s: str) -> str:
    return s[:1].upper() + s[1:]


def _pick_template(rng: random.Random, intent: str, product: str | None) -> str:
    options = []
    for text, cats in T[intent]:
        has_p = "{p}" in text or "{P}" in text
        if product is None:
            if cats == "" or (cats is None and has_p) or not has_p:
                options.append(text)
        else:
            if cats is None or (cats and PRODUCT_CAT[product] in cats):
                if has_p:
                    options.append(text)
    return rng.choice(options)


def _make_example(rng: random.Random, intent: str) -> tuple[str, dict]:
    cats, p_prod, p_order, generic = INTENT_SPEC[intent]

    # ---- labels ----------------------------------------------------------
    product = None
    if rng.random() < p_prod:
        product = rng.choice([p for p, c in PRODUCTS if c in cats])
    order_id = f"ORD-{rng.randrange(10000, 100000)}" if rng.random() < p_order else None
    r = rng.random()
    urgency = "high" if r < 0.3 else ("low" if r < 0.5 else "normal")
    first, last = rng.choice(FIRST_NAMES), rng.choice(SURNAMES)
    r = rng.random()
    name_mode = "intro" if r < 0.4 else ("signoff" if r < 0.72 else "none")
    name = None
    if name_mode != "none":
        name = f"{first} {last}" if rng.random() < 0.45 else first

    # ---- message ---------------------------------------------------------
    lower = rng.random() < 0.12
    template = _pick_template(rng, intent, product)
    if product is not None and "{p}" not in template and "{P}" not in template:
        raise AssertionError(template)
    if product is None and cats and template == "":
        raise AssertionError(intent)
    inline_order = order_id is not None and "{o}" in template and rng.random() < 0.5

    def render(t: str) -> str:
        t = _noisy(rng, t)
        if lower:
            t = _lower_templates(t)
        phrase = _product_phrase(rng, product, generic, intent, t)
        o = rng.choice(ORDER_INLINE).format(id=order_id) if inline_order else ""
        out = t.replace("{p}", phrase).replace("{P}", _cap(phrase)).replace("{o}", o)
        if o.endswith(",") and out.endswith(",."):
            out = out[:-2] + "."
        return out.replace(",,", ",").replace(",?", "?").replace(",:", ":").replace(",.", ".")

    main = render(template)

    middle = [main]
    if rng.random() < 0.45:
        middle.append(render(rng.choice(EXTRA[intent])))
    if order_id is not None and not inline_order:
        middle.insert(rng.randrange(len(middle) + 1), rng.choice(ORDER_SENTENCES).format(id=order_id))
    if rng.random() < 0.25:
        middle.insert(rng.randrange(len(middle) + 1), render(rng.choice(FILLERS)))

    if urgency == "high":
        style = rng.random()
        if style < 0.15:
            middle[0] = rng.choice(["URGENT: ", "Urgent: ", "ASAP: "]) + middle[0]
        elif style < 0.28:
            # "!!!" on the main sentence
            idx = middle.index(main)
            middle[idx] = re.sub(r"[.?!]*$", "!!!", middle[idx], count=1)
        else:
            middle.insert(rng.randrange(len(middle) + 1), rng.choice(HIGH_SENTENCES))
    elif urgency == "low":
        pos = len(middle) if rng.random() < 0.6 else rng.randrange(len(middle) + 1)
        middle.insert(pos, rng.choice(LOW_SENTENCES))

    parts = []
    if name_mode == "intro":
        intro = rng.choice(INTROS)
        if rng.random() < 0.5 and not intro.startswith(("Hi", "Hello")):
            parts.append(rng.choice(GREETINGS))
        parts.append(intro.format(n=name))
    elif rng.random() < 0.5:
        parts.append(rng.choice(GREETINGS))
    parts.extend(middle)
    if name_mode == "signoff":
        parts.append(rng.choice(SIGNOFFS).format(n=name))
    elif rng.random() < 0.3:
        parts.append(rng.choice(ANON_SIGNOFFS))

    sep = "\n" if rng.random() < 0.15 else " "
    msg = sep.join(parts)
    if rng.random() < 0.1:
        msg = msg + " " + rng.choice(EMOJI)
    if rng.random() < 0.04:
        msg = "  " + msg
    if rng.random() < 0.04:
        msg = msg + "   "

    label = {"name": name, "order_id": order_id, "product": product, "intent": intent, "urgency": urgency}
    return msg, {f: label[f] for f in FIELDS}


_NAME_RE = re.compile(r"\b(" + "|".join(re.escape(n) for n in FIRST_NAMES) + r")\b")


def _check(msg: str, label: dict) -> None:
    """Assert that every label can be read off the message."""
    low = msg.lower()
    has_high = any(c in low for c in HIGH_CUES)
    has_low = any(c in low for c in LOW_CUES)
    expected = "high" if has_high else ("low" if has_low else "normal")
    assert not (has_high and has_low), msg
    assert expected == label["urgency"], (msg, label)
    ids = re.findall(r"ORD-\d{5}", msg)
    assert ids == ([label["order_id"]] if label["order_id"] else []), (msg, label)
    prods = [p for p in PRODUCT_NAMES if p in msg]
    assert prods == ([label["product"]] if label["product"] else []), (msg, label)
    names = _NAME_RE.findall(msg)
    if label["name"] is None:
        assert not names, (msg, label)
    else:
        assert label["name"] in msg and len(set(names)) == 1, (msg, label)
        assert label["name"].split()[0] == names[0], (msg, label)


def _example(rng: random.Random, intent: str) -> tuple[str, dict]:
    for _ in range(1000):
        msg, label = _make_example(rng, intent)
        if MIN_WORDS <= len(msg.split()) <= MAX_WORDS:
            _check(msg, label)
            return msg, label
    raise RuntimeError(f"could not generate a message for {intent}")


def generate(n: int, seed: int, exclude: set[str] = frozenset()) -> list[dict]:
    """Generate ``n`` unique chat rows, balanced over intents, avoiding ``exclude`` messages."""
    rng = random.Random(seed)
    rows, seen = [], set(exclude)
    i = 0
    while len(rows) < n:
        intent = INTENTS[i % len(INTENTS)]
        msg, label = _example(rng, intent)
        if msg in seen or msg.strip() in seen:
            continue
        seen.add(msg)
        seen.add(msg.strip())
        i += 1
        rows.append(
            {
                "messages": [
                    {"role": "system", "content": SYSTEM_PROMPT},
                    {"role": "user", "content": msg},
                    {"role": "assistant", "content": json.dumps(label)},
                ]
            }
        )
    rng.shuffle(rows)
    return rows


def _write(path: Path, rows: list[dict]) -> None:
    data = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
    path.write_bytes(data.encode("utf-8"))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output directory")
    args = ap.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    train = generate(N_TRAIN, TRAIN_SEED)
    train_msgs = {r["messages"][1]["content"] for r in train}
    heldout = generate(N_HELDOUT, HELDOUT_SEED, exclude=train_msgs)
    _write(args.out / TRAIN_FILE, train)
    _write(args.out / HELDOUT_FILE, heldout)
    print(f"wrote {len(train)} rows to {args.out / TRAIN_FILE}")
    print(f"wrote {len(heldout)} rows to {args.out / HELDOUT_FILE}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
