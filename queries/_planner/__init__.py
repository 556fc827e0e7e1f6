"""The cost-based planner: every way to answer a query (the log, or a view it can be
rewritten onto), costed from the catalog's statistics, the cheapest chosen, plans cached
by the query's shape."""

from queries._planner._planner import Candidate, Catalog, CatalogView, Plan, Planner, shape_of

__all__ = ["Candidate", "Catalog", "CatalogView", "Plan", "Planner", "shape_of"]
