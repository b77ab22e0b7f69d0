"""peer_links.PeerLinks: the links follow the addresses they are given (a new peer gets a running
link, a peer gone or moved loses its own, this peer never links to itself), and a message for a
peer with no link is dropped and counted, never an error. No sockets are reached: messages are
queued only, or sent to a port where nothing listens."""

from __future__ import annotations

import trio
import trio.testing

from tokenvault.peer_links import PeerLinks


def links() -> PeerLinks:
    return PeerLinks(
        local_peer_id="n1",
        key=b"k" * 32,
        incarnation="a" * 32,
        fingerprint="f" * 32,
        link_context=None,
    )


def test_links_follow_the_addresses_given() -> None:
    peer_links = links()
    peer_links.follow({"n1": "127.0.0.1:1", "n2": "127.0.0.1:2", "n3": "127.0.0.1:3"})
    assert sorted(peer_links.links) == ["n2", "n3"]
    n2 = peer_links.links["n2"]
    peer_links.follow({"n2": "127.0.0.1:2", "n4": "127.0.0.1:4"})
    assert sorted(peer_links.links) == ["n2", "n4"]
    assert peer_links.links["n2"] is n2  # kept as it was
    peer_links.follow({"n2": "127.0.0.1:22", "n4": "127.0.0.1:4"})
    assert peer_links.links["n2"] is not n2  # moved: a new link to the new address


def test_a_message_with_no_link_is_dropped_and_counted() -> None:
    peer_links = links()
    peer_links.follow({"n2": "127.0.0.1:2", "n5": "not an address"})
    assert sorted(peer_links.links) == ["n2"]  # no link to what is no host:port
    assert peer_links.send_nowait("n2", b"{}")
    assert not peer_links.send_nowait("n5", b"{}")
    assert not peer_links.send_nowait("n9", b"{}")
    assert peer_links.unroutable == 2
    assert peer_links.links["n2"].statistics().queued_messages == 1


async def test_a_link_added_while_running_runs_and_a_removed_one_stops(
    autojump_clock: trio.testing.MockClock,
) -> None:
    peer_links = links()
    async with trio.open_nursery() as nursery:
        await nursery.start(peer_links.run)
        peer_links.follow({"n2": "127.0.0.1:1"})  # port 1: nothing listens
        peer_links.send_nowait("n2", b"{}")
        await trio.testing.wait_all_tasks_blocked()
        n2 = peer_links.links["n2"]
        assert n2.statistics().batches_failed == 1  # it ran: it tried, and failed
        peer_links.follow({})
        await trio.testing.wait_all_tasks_blocked()
        n2.send_nowait(b"{}")  # queued on a link whose task was cancelled: never sent
        await trio.testing.wait_all_tasks_blocked()
        assert n2.statistics().batches_failed == 1 and n2.statistics().queued_messages == 1
        nursery.cancel_scope.cancel()
