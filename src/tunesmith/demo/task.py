"""Definition of the bundled demo task: customer-support message -> JSON.

The demo dataset (``data/support_train.jsonl`` / ``data/support_heldout.jsonl``)
is produced by ``scripts/build_demo_data.py``. Each row is an OpenAI-style chat
example whose system message is :data:`SYSTEM_PROMPT` and whose assistant
message is ``json.dumps`` of a dict with exactly the keys in :data:`FIELDS`
(in that order).
"""

from __future__ import annotations

#: Output keys, in the order they appear in the reference answers.
FIELDS: tuple[str, ...] = ("name", "order_id", "product", "intent", "urgency")

#: Allowed values for the categorical fields.
INTENTS: tuple[str, ...] = (
    "refund",
    "cancel_order",
    "shipping_status",
    "technical_issue",
    "billing",
    "account_access",
    "product_question",
)
URGENCIES: tuple[str, ...] = ("low", "normal", "high")

#: Short, fixed instruction used as the system message of every example.
SYSTEM_PROMPT: str = (
    "Convert the customer message to JSON with keys name, order_id, product, "
    "intent, urgency. Use null if absent. "
    "intent: refund|cancel_order|shipping_status|technical_issue|billing|"
    "account_access|product_question. urgency: high if urgent, asap or a deadline; "
    "low if no rush; else normal."
)

#: An example answer shown in the instruction of the GRPO demo's prompts. Its values belong to no message,
#: so a reply that copies them is valid JSON with wrong fields: what GRPO's field reward teaches away.
EXAMPLE_ANSWER: str = (
    '{"name": "Ann Lee", "order_id": "ORD-12345", "product": "Desk Lamp", "intent": "refund", "urgency": "normal"}'
)


def extraction_instruction(message: str) -> str:
    """One user turn asking for the JSON of `message`, with the example answer (the GRPO demo's prompt)."""
    return (
        "Extract name, order_id, product, intent and urgency from this customer message. "
        f"Answer with one JSON object like {EXAMPLE_ANSWER}\n\nMessage: {message}"
    )
