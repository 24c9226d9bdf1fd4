"""The identity service (aziot-identityd's API): device provisioning, module identities, principals, backup."""
