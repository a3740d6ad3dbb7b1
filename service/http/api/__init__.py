"""HTTP routes, one APIRouter per area: events, users, model, operations (health and metrics)."""
