"""The API's Redis uses on a Redis Cluster: the rate-limit script, the shared cache, gateway counts.

The single-node suites' own tests, run against the cluster (tests/cluster/conftest.py): the
script's keys share one hash tag (api/keys.py), gateway counts are read across slots.
"""

from __future__ import annotations

import pytest

from tests.api import test_cache as cache
from tests.api import test_ratelimit as ratelimit
from tests.api import test_realtime as realtime

pytestmark = pytest.mark.needs_system("redis-server")

make_app = ratelimit.make_app

test_the_ip_limit_counts_down_then_refuses = ratelimit.test_the_ip_limit_counts_down_then_refuses
test_the_user_limit_follows_the_user_across_addresses = ratelimit.test_the_user_limit_follows_the_user_across_addresses
test_product_list_is_a_miss_then_a_hit_until_a_write = cache.test_product_list_is_a_miss_then_a_hit_until_a_write
test_a_write_invalidates_lists_of_every_query = cache.test_a_write_invalidates_lists_of_every_query
test_single_orders_are_cached_and_kept_fresh_by_writes = cache.test_single_orders_are_cached_and_kept_fresh_by_writes
test_a_real_gateway_reports_its_clients = realtime.test_a_real_gateway_reports_its_clients
