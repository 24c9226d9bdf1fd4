"""The certificates service (aziot-certd's API): store, issuance by CSR, EST enrollment, automatic renewal."""
