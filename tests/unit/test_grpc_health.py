"""The health watches' budget: per connection and in all, given back when a watch ends."""

from __future__ import annotations

from service.grpc.health import WatchBudget


def test_watches_are_bounded_per_connection_and_in_all():
    budget = WatchBudget(per_connection=2, total=3)
    for _ in range(2):
        assert budget.refusal("ipv4:127.0.0.1:1000") is None
        budget.take("ipv4:127.0.0.1:1000")
    assert "this connection has 2 health watches open" in budget.refusal("ipv4:127.0.0.1:1000")
    budget.take("ipv4:127.0.0.1:2000")
    assert "the server has 3 health watches open" in budget.refusal("ipv4:127.0.0.1:3000")
    budget.give_back("ipv4:127.0.0.1:1000")
    assert budget.refusal("ipv4:127.0.0.1:3000") is None
    budget.give_back("ipv4:127.0.0.1:1000")
    budget.give_back("ipv4:127.0.0.1:2000")
    assert budget.open == {} and budget.open_total == 0
