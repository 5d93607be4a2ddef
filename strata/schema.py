"""Arrow schemas of the warehouse: behaviour events, user attributes, issued actions and
experiment exposures.

One events table holds every behaviour the platform tracks; columns that do not apply to an
event type are null. The actions table holds every action the trigger rules issued (copied
from the outbox stream by the warehouse sink); the exposures table every user's first exposure
to an experiment (copied from the exposures stream by the same sink).
``docs/data-model.md`` documents every column.
Changes to a table's columns bump ``SCHEMA_VERSION`` (recorded in the warehouse manifest); a
new table does not (a manifest written before it existed lists no such table, and readers
treat it as empty).
"""

from __future__ import annotations

from enum import StrEnum

import pyarrow as pa

SCHEMA_VERSION = 1


class EventType(StrEnum):
    """Every behaviour event the platform tracks, grouped as the operators group them."""

    # browsing
    ITEM_VIEW = "item_view"
    CATEGORY_VIEW = "category_view"
    SEARCH = "search"
    # purchasing
    ADD_TO_CART = "add_to_cart"
    REMOVE_FROM_CART = "remove_from_cart"
    FAVOURITE = "favourite"
    ORDER = "order"
    # marketing
    COUPON_CLAIM = "coupon_claim"
    COUPON_USE = "coupon_use"
    SHARE = "share"
    # interaction
    REVIEW = "review"
    SERVICE_CONTACT = "service_contact"
    COMMUNITY_POST = "community_post"
    # sessions
    APP_VISIT = "app_visit"


EVENT_TYPES: tuple[str, ...] = tuple(e.value for e in EventType)

EVENT_GROUPS: dict[str, tuple[EventType, ...]] = {
    "browsing": (EventType.ITEM_VIEW, EventType.CATEGORY_VIEW, EventType.SEARCH),
    "purchasing": (
        EventType.ADD_TO_CART,
        EventType.REMOVE_FROM_CART,
        EventType.FAVOURITE,
        EventType.ORDER,
    ),
    "marketing": (EventType.COUPON_CLAIM, EventType.COUPON_USE, EventType.SHARE),
    "interaction": (EventType.REVIEW, EventType.SERVICE_CONTACT, EventType.COMMUNITY_POST),
    "session": (EventType.APP_VISIT,),
}


class Category(StrEnum):
    """Grocery categories of the catalogue."""

    VEGETABLES = "vegetables"
    FRUIT = "fruit"
    MEAT_POULTRY = "meat_poultry"
    SEAFOOD = "seafood"
    DAIRY_EGGS = "dairy_eggs"
    GRAIN_OIL = "grain_oil"
    SNACKS_DRINKS = "snacks_drinks"
    DAILY_GOODS = "daily_goods"


CATEGORIES: tuple[str, ...] = tuple(c.value for c in Category)

AGE_BANDS: tuple[str, ...] = ("18-24", "25-34", "35-44", "45-54", "55+", "unknown")
GENDERS: tuple[str, ...] = ("female", "male", "unknown")
DEVICES: tuple[str, ...] = ("ios", "android", "mini_program", "web")
CHANNELS: tuple[str, ...] = ("organic", "ads", "social_share", "offline_referral")

TIMESTAMP = pa.timestamp("ms", tz="UTC")

EVENTS_SCHEMA = pa.schema(
    [
        pa.field("user_id", pa.int64(), nullable=False),
        pa.field("ts", TIMESTAMP, nullable=False),
        pa.field("event_type", pa.string(), nullable=False),
        pa.field("session_id", pa.int64()),
        pa.field("item_id", pa.int64()),
        pa.field("category", pa.string()),
        pa.field("query", pa.string()),
        pa.field("order_id", pa.string()),
        pa.field("amount_cny", pa.float64()),
        pa.field("discount_cny", pa.float64()),
        pa.field("coupon_id", pa.string()),
        pa.field("item_count", pa.int16()),
        pa.field("categories", pa.list_(pa.string())),
        pa.field("rating", pa.int8()),
    ],
    metadata={"strata.table": "events", "strata.schema_version": str(SCHEMA_VERSION)},
)

USERS_SCHEMA = pa.schema(
    [
        pa.field("user_id", pa.int64(), nullable=False),
        pa.field("signup_ts", TIMESTAMP),
        pa.field("age_band", pa.string()),
        pa.field("gender", pa.string()),
        pa.field("region", pa.string()),
        pa.field("city", pa.string()),
        pa.field("device", pa.string()),
        pa.field("channel", pa.string()),
        pa.field("birthday_md", pa.string()),
    ],
    metadata={"strata.table": "users", "strata.schema_version": str(SCHEMA_VERSION)},
)

#: Raw personal data that must never enter the warehouse: importers refuse these columns.
PII_COLUMNS: frozenset[str] = frozenset(
    {
        "name",
        "full_name",
        "first_name",
        "last_name",
        "real_name",
        "phone",
        "phone_number",
        "mobile",
        "telephone",
        "email",
        "address",
        "street",
        "street_address",
        "id_card",
        "id_number",
    }
)

#: Actions the trigger rules issued (coupons, service tasks, gift packs, pushes), one row per
#: action, as the stream workers wrote them to the outbox. A table added after schema version 1
#: shipped: a warehouse whose manifest lacks it reads it as empty.
ACTIONS_SCHEMA = pa.schema(
    [
        pa.field("user_id", pa.int64(), nullable=False),
        # when it was issued (event time of the decision: the trigger's ts or the timer's due)
        pa.field("ts", TIMESTAMP, nullable=False),
        pa.field("rule", pa.string(), nullable=False),
        pa.field("action", pa.string(), nullable=False),
        # idempotency key of (rule, user, trigger instance)
        pa.field("key", pa.string(), nullable=False),
        pa.field("params", pa.string()),  # JSON text
        pa.field("trigger", pa.string()),  # JSON text
        pa.field("coupon_id", pa.string()),
        pa.field("value_cny", pa.float64()),  # a coupon's face value, null for other actions
    ],
    metadata={"strata.table": "actions", "strata.schema_version": str(SCHEMA_VERSION)},
)

#: Where a first exposure was logged: an answer that showed the user their arm (``serve``) or
#: an action issued to them under it (``action``).
EXPOSURE_SOURCES: tuple[str, ...] = ("serve", "action")

#: First exposures to experiments, one row per (experiment, user) as the exposure log wrote
#: them (Redis dedupes a user's later exposures before they reach the stream). Added after
#: schema version 1 shipped, like actions: a manifest that lacks it reads it as empty.
EXPOSURES_SCHEMA = pa.schema(
    [
        pa.field("user_id", pa.int64(), nullable=False),
        pa.field("ts", TIMESTAMP, nullable=False),  # the first exposure's time
        pa.field("experiment", pa.string(), nullable=False),
        pa.field("arm", pa.string(), nullable=False),  # an arm's name, or "holdout"
        pa.field("source", pa.string(), nullable=False),  # one of EXPOSURE_SOURCES
    ],
    metadata={"strata.table": "exposures", "strata.schema_version": str(SCHEMA_VERSION)},
)

TABLE_SCHEMAS: dict[str, pa.Schema] = {
    "events": EVENTS_SCHEMA,
    "users": USERS_SCHEMA,
    "actions": ACTIONS_SCHEMA,
    "exposures": EXPOSURES_SCHEMA,
}


def conform(table: pa.Table, schema: pa.Schema) -> pa.Table:
    """Return ``table`` with exactly ``schema``'s columns, in order, cast to its types.

    Missing nullable columns are filled with nulls; extra columns are an error, so that a
    producer cannot smuggle unknown (possibly personal) data into the warehouse.

    Raises:
        ValueError: on an unknown column, or a missing non-nullable one.
    """
    extra = [name for name in table.column_names if name not in schema.names]
    if extra:
        raise ValueError(
            f"columns not in the {schema.metadata.get(b'strata.table', b'?').decode()} "
            f"schema: {extra}; allowed: {schema.names}"
        )
    columns = []
    for field in schema:
        if field.name in table.column_names:
            columns.append(table.column(field.name).cast(field.type))
        elif field.nullable:
            columns.append(pa.nulls(table.num_rows, field.type))
        else:
            raise ValueError(f"required column {field.name!r} is missing")
    return pa.Table.from_arrays(columns, schema=schema)


#: Snapshot column of each model's prediction (model name -> column), in model order.
MODEL_PREDICTION_COLUMNS: dict[str, str] = {
    "churn": "churn_p",
    "repurchase": "repurchase_p",
    "spend": "predicted_spend",
}
