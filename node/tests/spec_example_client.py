"""The spec's example through a client generated from the served OpenAPI document: two voice
samples uploaded, then the documented request example sent with their ids; a WAV comes back.

Usage: spec_example_client.py <folder holding dia_client> <base URL> <API key> <voice clip>
<openapi.json>
"""

import io
import json
import sys
import wave

import httpx

sys.path.insert(0, sys.argv[1])

from dia_client import AuthenticatedClient  # noqa: E402
from dia_client.api.generations import create_voice_generation  # noqa: E402
from dia_client.api.voices import upload_voice  # noqa: E402
from dia_client.models import ErrorBody, SpeechRequest, Voice, VoiceUpload  # noqa: E402
from dia_client.types import File  # noqa: E402

base_url, key, clip_path, doc_path = sys.argv[2:6]
# The tiny model on a CPU takes a while for the default 3072 frames.
client = AuthenticatedClient(base_url=base_url, token=key, timeout=httpx.Timeout(900.0))
with open(clip_path, "rb") as f:
    clip = f.read()


def upload(name: str, transcript: str, is_default: bool) -> Voice:
    file = File(payload=io.BytesIO(clip), file_name="voice.wav", mime_type="audio/wav")
    body = VoiceUpload(
        file=file, speaker_name=name, transcript=transcript, is_default=is_default
    )
    voice = upload_voice.sync(client=client, body=body)
    assert isinstance(voice, Voice), voice
    return voice


host = upload("Host", "[S1] A prompt.", True)
guest = upload("Guest", "Another prompt.", False)
assert host.is_default and not guest.is_default, (host, guest)

with open(doc_path) as f:
    operation = json.load(f)["paths"]["/v1/voice/generations"]["post"]
example = operation["requestBody"]["content"]["application/json"]["example"]
# The spec's ids (12, 17) are someone else's library; these are ours.
example["speakers"] = {"S1": host.id, "S2": guest.id}

response = create_voice_generation.sync_detailed(
    client=client, body=SpeechRequest.from_dict(example)
)
assert response.status_code == 200, (response.status_code, response.content)
assert isinstance(response.parsed, File), response.parsed
with wave.open(response.parsed.payload) as wav:
    shape = (wav.getframerate(), wav.getnchannels(), wav.getsampwidth())
    frames = wav.getnframes()
assert shape == (44100, 1, 2), shape
assert frames > 0
print(f"request {response.headers['x-request-id']}: {frames} samples of WAV")

# Errors come back typed too.
wrong = SpeechRequest.from_dict(dict(example, speakers={"S1": guest.id + 1000}))
error = create_voice_generation.sync(client=client, body=wrong)
assert isinstance(error, ErrorBody), error
assert error.error.type_ == "invalid_voice_sample", error
