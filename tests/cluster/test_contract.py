"""The realtime contract tests, unchanged, against a gateway and API running on a Redis Cluster.

Subscribe, recover with `since`, gap-free delivery under concurrent writers, the privacy rules, live
locations (ephemeral frames, SPUBLISH from the gateway) and connect tickets are the single-node
suites' own test functions; tests/cluster/conftest.py swaps in the cluster.
"""

from __future__ import annotations

import pytest

from tests.gateway import test_gps as gps
from tests.gateway import test_ordering as ordering
from tests.gateway import test_privacy as privacy
from tests.gateway import test_subscriptions as subscriptions
from tests.gateway import test_tickets as tickets

pytestmark = pytest.mark.needs_system("redis-server")

connect = subscriptions.connect
rest = privacy.rest

test_channel_authorization = subscriptions.test_channel_authorization
test_order_channel_follows_the_order = subscriptions.test_order_channel_follows_the_order
test_resubscribe_is_idempotent_and_unsubscribe_stops_delivery = \
    subscriptions.test_resubscribe_is_idempotent_and_unsubscribe_stops_delivery
test_events_arrive_in_id_order_exactly_once = subscriptions.test_events_arrive_in_id_order_exactly_once
test_since_replays_missed_events_then_goes_live = subscriptions.test_since_replays_missed_events_then_goes_live
test_replay_and_live_events_merge_without_gap_or_duplicate = \
    subscriptions.test_replay_and_live_events_merge_without_gap_or_duplicate
test_many_writers_committing_in_random_order = ordering.test_many_writers_committing_in_random_order
test_a_shared_driver_shows_each_restaurant_only_its_own_orders = \
    privacy.test_a_shared_driver_shows_each_restaurant_only_its_own_orders
test_a_restaurant_loses_the_driver_channel_when_its_last_order_is_delivered = \
    privacy.test_a_restaurant_loses_the_driver_channel_when_its_last_order_is_delivered
test_a_location_is_fanned_out_acked_and_stored = gps.test_a_location_is_fanned_out_acked_and_stored
test_a_ticket_opens_one_connection_as_its_user = tickets.test_a_ticket_opens_one_connection_as_its_user
test_two_handshakes_racing_with_one_ticket_get_one_connection = \
    tickets.test_two_handshakes_racing_with_one_ticket_get_one_connection
