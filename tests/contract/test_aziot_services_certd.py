"""aziot-certd's contract, route by route, against Edgeward's certificates service in the real daemon over its real
socket. What is checked is what aziot's code does, not its prose:

- requests are what `cert/aziot-cert-client-async/src/lib.rs` sends: `csr` and `pem` are PEM *text*
  (`aziot-cert-common-http`'s `Pem` serializes the bytes as a UTF-8 string, no base64), ids percent-encoded in the
  path, api-version 2020-09-01;
- success codes are the ones that client accepts: create and import only 201 (`parse(&[CREATED])`), get 200
  (`parse_expect_ok`), delete 204 (`no_content_response`);
- error codes are `cert/aziot-certd/src/http/*.rs` + `lib.rs`: a missing cert is `InvalidParameter("id", "not
  found")` -> 400, a bad CSR `InvalidParameter("csr")` -> 400, deleting a missing cert is Ok -> 204, an unauthorized
  uid 401; `http-common/src/server.rs`: no api-version 400, unknown route 404, a POST without a body 400 "missing
  request body", a PUT whose Content-Type is not JSON 415, a JSON body of the wrong shape 422.
"""

from __future__ import annotations

import base64

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from edgeward.certs.client import CertsClient
from edgeward.certs.errors import CertNotFound
from tests.contract._aziot import Device, call, device

pytestmark = pytest.mark.asyncio(loop_scope="session")

__all__ = ["device"]

V = "api-version=2020-09-01"


def _csr(cn: str = "contract-server") -> x509.CertificateSigningRequest:
    key = ec.generate_private_key(ec.SECP256R1())
    return (x509.CertificateSigningRequestBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])).sign(key, hashes.SHA256()))


def _pem(csr: x509.CertificateSigningRequest) -> str:
    return csr.public_bytes(serialization.Encoding.PEM).decode()


async def test_certd_create_takes_the_pem_text_csr_the_aziot_client_sends_and_answers_201(device: Device) -> None:
    """aziot-cert-client-async `create_cert`: body `{certId, csr: <PEM text>, issuer: null}`, success only on 201,
    response `{pem}` with the chain leaf first."""
    csr = _csr()
    status, body = await call(device.certd, "POST", f"/certificates?{V}",
                              {"certId": "contract-server", "csr": _pem(csr), "issuer": None})
    assert status == 201, body
    assert set(body) == {"pem"}
    leaf, ca = x509.load_pem_x509_certificates(body["pem"].encode())
    assert leaf.public_key() == csr.public_key()
    leaf.verify_directly_issued_by(ca)


async def test_certd_create_still_takes_a_base64_der_csr(device: Device) -> None:
    """Edgeward's earlier clients sent base64 DER (what aziot's prose docs call the field); it keeps working."""
    csr = _csr()
    der = base64.b64encode(csr.public_bytes(serialization.Encoding.DER)).decode()
    status, body = await call(device.certd, "POST", f"/certificates?{V}", {"certId": "contract-server", "csr": der})
    assert status == 201, body
    assert x509.load_pem_x509_certificates(body["pem"].encode())[0].public_key() == csr.public_key()


@pytest.mark.parametrize("csr", ["garbage", "-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE "
                                 "REQUEST-----\n", "", "-----BEGIN CERTIFICATE REQUEST-----"])
async def test_certd_garbage_csr_is_a_400_as_aziot_answers(device: Device, csr: str) -> None:
    """aziot-certd `create_cert`: `X509Req::from_pem` fails -> `InvalidParameter("csr")` -> 400."""
    status, body = await call(device.certd, "POST", f"/certificates?{V}", {"certId": "contract-server", "csr": csr})
    assert status == 400, body
    assert "csr" in body["message"]


async def test_certd_csr_whose_signature_does_not_verify_is_a_400(device: Device) -> None:
    der = bytearray(_csr().public_bytes(serialization.Encoding.DER))
    der[-3] ^= 0xFF
    pem = x509.load_der_x509_csr(bytes(der)).public_bytes(serialization.Encoding.PEM).decode()
    status, body = await call(device.certd, "POST", f"/certificates?{V}", {"certId": "contract-server", "csr": pem})
    assert status == 400, body


async def test_certd_import_answers_201_with_the_pem_it_stored(device: Device) -> None:
    """aziot-cert-client-async `import_cert`: PUT `{pem}`, success only on 201, response `{pem}`."""
    _, created = await call(device.certd, "POST", f"/certificates?{V}",
                            {"certId": "contract-server", "csr": _pem(_csr())})
    status, body = await call(device.certd, "PUT", f"/certificates/contract-imported?{V}", {"pem": created["pem"]})
    assert (status, body) == (201, {"pem": created["pem"]})
    status, body = await call(device.certd, "GET", f"/certificates/contract-imported?{V}")
    assert (status, body) == (200, {"pem": created["pem"]})


async def test_certd_get_of_a_missing_cert_is_a_400_as_aziot_answers(device: Device) -> None:
    """aziot-certd `get_cert`: `invalid_parameter("id", "not found")` -> 400 with that parameter named."""
    status, body = await call(device.certd, "GET", f"/certificates/contract-never-issued?{V}")
    assert status == 400, body
    assert 'parameter "id"' in body["message"] and "not found" in body["message"]


async def test_certd_delete_answers_204_also_for_a_missing_cert(device: Device) -> None:
    """aziot-certd `delete_cert` treats a missing file as deleted; the client's `no_content_response` wants 204."""
    _, created = await call(device.certd, "POST", f"/certificates?{V}",
                            {"certId": "contract-server", "csr": _pem(_csr())})
    assert (await call(device.certd, "PUT", f"/certificates/contract-gone?{V}", {"pem": created["pem"]}))[0] == 201
    assert await call(device.certd, "DELETE", f"/certificates/contract-gone?{V}") == (204, None)
    assert await call(device.certd, "DELETE", f"/certificates/contract-gone?{V}") == (204, None)
    assert await call(device.certd, "DELETE", f"/certificates/contract-never-issued?{V}") == (204, None)
    assert (await call(device.certd, "GET", f"/certificates/contract-gone?{V}"))[0] == 400


async def test_certd_percent_encoded_ids_are_decoded_once(device: Device) -> None:
    """The client percent-encodes ids (`PATH_SEGMENT_ENCODE_SET`); the server decodes the segment once."""
    _, created = await call(device.certd, "POST", f"/certificates?{V}",
                            {"certId": "contract-server", "csr": _pem(_csr())})
    status, _ = await call(device.certd, "PUT", f"/certificates/contract%20odd%3Aid?{V}", {"pem": created["pem"]})
    assert status == 201
    assert (await call(device.certd, "GET", f"/certificates/contract%20odd%3Aid?{V}"))[0] == 200
    assert (await call(device.certd, "GET", f"/certificates/contract%2520odd%253Aid?{V}"))[0] == 400


async def test_certd_generic_http_codes_are_aziots(device: Device) -> None:
    """http-common's server: no or unknown api-version 400, unknown route 404, POST without a body 400, a PUT that
    is not JSON 415, a body of the wrong shape 422."""
    assert (await call(device.certd, "GET", "/certificates/contract-server"))[0] == 400
    assert (await call(device.certd, "GET", "/certificates/contract-server?api-version=2099-01-01"))[0] == 400
    assert (await call(device.certd, "GET", f"/certificates?{V}"))[0] in (404, 405)
    assert (await call(device.certd, "GET", f"/nowhere?{V}"))[0] == 404
    status, body = await call(device.certd, "POST", f"/certificates?{V}")
    assert status == 400 and "missing request body" in body["message"]
    status, _ = await call(device.certd, "PUT", f"/certificates/x?{V}", raw=b"pem", headers={"Content-Type": "text/plain"})
    assert status == 415
    assert (await call(device.certd, "POST", f"/certificates?{V}", {"certId": "x", "csr": 5}))[0] == 422
    assert (await call(device.certd, "POST", f"/certificates?{V}", {"csr": "x"}))[0] == 422


async def test_edgewards_certs_client_speaks_aziots_wire(device: Device) -> None:
    """Edgeward's own client sends PEM text as aziot's does, takes the 201s, and still tells a missing cert (the
    wire's 400) apart as CertNotFound for its callers."""
    client = CertsClient(device.certd)
    try:
        csr = _csr()
        pem = await client.create_cert("contract-server", csr.public_bytes(serialization.Encoding.DER))
        assert x509.load_pem_x509_certificates(pem.encode())[0].public_key() == csr.public_key()
        assert await client.import_cert("contract-client-import", pem) == pem
        await client.delete_cert("contract-client-import")
        await client.delete_cert("contract-client-import")
        with pytest.raises(CertNotFound) as e:
            await client.get_cert("contract-client-import")
        assert e.value.status == 404  # Edgeward's callers keep their "not found" meaning
    finally:
        await client.close()
