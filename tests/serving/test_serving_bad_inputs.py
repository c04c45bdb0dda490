"""Every bad steering input (tests/bad_inputs.py, sent as `vllm_xargs`) is a 400 from the keyed
server, plain and streamed, and the server keeps serving: a good request after each one gets
its offline answer."""

import openai
import pytest
from bad_inputs import as_xargs, cases
from servers import chat, complete, good_request_succeeds

SERVER = "keyed"


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
@pytest.mark.parametrize("case", cases("spec", "admission", "http"))
def test_bad_steering_is_400_then_server_serves(server, client, model_name, case, stream):
    with pytest.raises(openai.BadRequestError) as err:
        out = complete(client, model_name, "hello world", as_xargs(case), stream=stream)
        list(out) if stream else None
    assert err.value.status_code == 400
    assert case.message in err.value.message
    good_request_succeeds(server, client, model_name)


def test_bad_steering_in_chat_is_400(server, client, model_name):
    for stream in (False, True):
        with pytest.raises(openai.BadRequestError, match="unknown steering vector"):
            chat(client, model_name, "hi", {"steering": "missing"}, stream=stream)
    good_request_succeeds(server, client, model_name)
