"""REDIS_URL's forms: one node, a cluster's seed nodes, sentinels and a primary's name; a bad one
is refused at start with one line that names the setting and hides the password."""
from __future__ import annotations

import pytest

from server import config
from server.redis_target import TargetError, parse


def test_a_single_node_url_is_kept_as_given():
    target = parse("rediss://:secret@cache.internal:6380/2")
    assert (target.kind, target.tls, target.url) == ("single", True,
                                                     "rediss://:secret@cache.internal:6380/2")
    assert "secret" not in target.describe()


def test_cluster_seed_nodes_with_tls_and_options():
    target = parse("rediss+cluster://app:secret@10.0.0.1:7000,10.0.0.2:7001,node3"
                   "?ssl_cert_reqs=required&ssl_ca_certs=/etc/ca.pem")
    assert target.kind == "cluster" and target.tls
    assert target.nodes == (("10.0.0.1", 7000), ("10.0.0.2", 7001), ("node3", 6379))
    assert target.options == {"username": "app", "password": "secret",
                              "ssl_cert_reqs": "required", "ssl_ca_certs": "/etc/ca.pem"}
    assert "secret" not in target.describe()


def test_sentinels_primary_name_database_and_sentinel_password():
    target = parse("redis+sentinel://:pw@s1:26380,s2/registry/3?sentinel_password=spw"
                   "&socket_timeout=2")
    assert (target.kind, target.primary_name, target.db) == ("sentinel", "registry", 3)
    assert target.nodes == (("s1", 26380), ("s2", 26379))
    assert target.options == {"password": "pw", "socket_timeout": 2.0}
    assert target.sentinel_options == {"sentinel_password": "spw"}


@pytest.mark.parametrize("url, says", [
    ("redis+sentinel://s1:26379", "primary's name is missing"),
    ("redis+cluster://a:7000/3", "database 0 only"),
    ("redis+cluster://a:port", "port 'port' is not a number"),
    ("redis+cluster://", "no seed node listed"),
    ("redis+sentinel://s1/name/x", "database 'x' is not a number"),
    ("memcached://a", "is not a redis://"),
])
def test_bad_urls_say_what_is_wrong(url, says):
    with pytest.raises(TargetError, match=says):
        parse(url)


def test_a_bad_url_stops_the_server_naming_the_setting_without_the_password():
    with pytest.raises(config.ConfigError) as err:
        config.validate(config.Settings(redis_url="redis+sentinel://:hunter2@s1:26379"))
    assert str(err.value).startswith("REDIS_URL / --redis-url:")
    assert "hunter2" not in str(err.value)
