def test_it_serves_the_health_check(client):
    assert client.get("/healthz").content == b"ok"
