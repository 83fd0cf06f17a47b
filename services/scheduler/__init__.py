"""The scheduler: the ResCoin policy as a pure function, its baselines, the coin ledger.

from rescoin.services.scheduler import allocate
alloc = allocate(demand, template, capacity, coins, share_leftover=False)
"""

from .policy import POLICIES, PolicyInputError
from .policy import rescoin as allocate
from .policy import rescoin_loop as allocate_loop

__all__ = ["POLICIES", "PolicyInputError", "allocate", "allocate_loop"]
