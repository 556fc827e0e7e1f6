"""The cost-based planner: every way to answer a query (the log, or a view it can be
rewritten onto), costed from the catalog's statistics by a cost model that learns from
observed runs, the cheapest chosen, plans cached by the query's shape."""

from queries._planner._catalog import Catalog, CatalogView
from queries._planner._cost import CostModel, Kind
from queries._planner._planner import Candidate, Plan, Planner, shape_of

__all__ = [
    "Candidate",
    "Catalog",
    "CatalogView",
    "CostModel",
    "Kind",
    "Plan",
    "Planner",
    "shape_of",
]
