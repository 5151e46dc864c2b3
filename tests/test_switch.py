import threading

import pytest

from lightning_l2o.switch import Switch


def test_a_block_sets_the_switch_and_restores_it_also_after_an_error():
    switch = Switch(True)
    with switch(False):
        assert not switch
        with switch(True):
            assert switch
        assert not switch
    assert switch
    with pytest.raises(ValueError), switch(False):
        raise ValueError
    assert switch


def test_an_unavailable_switch_stays_off():
    switch = Switch(True, available=False)
    assert not switch
    with switch(True):
        assert not switch


@pytest.mark.parametrize("per_thread", [True, False])
def test_a_per_thread_switch_is_set_for_its_own_thread_only(per_thread):
    switch, seen = Switch(False, per_thread=per_thread), []
    with switch():
        thread = threading.Thread(target=lambda: seen.append(bool(switch)))
        thread.start()
        thread.join()
    assert seen == [per_thread is False] and not switch
