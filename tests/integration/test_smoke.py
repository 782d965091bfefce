from tests.servers import StageboxServer


def test_health_answers_once_ready(server: StageboxServer, api):
    assert api.get("/api/v1/health").json()["status"] == "ok"
