# benches/api_client.sh: the request an API integration sends, for the `api` kinds of
# compare.sh and instructions.sh. Sourced, not run.
#
# wrk's own request is a 40-byte head; what reaches an API is closer to this (~1.2 KB): a
# JWT bearer token (header, claims and an RS256 signature from a 2048-bit key: ~970
# bytes), a user agent, Accept, `Connection: keep-alive`, a tenant field and a query. Costs per byte of head (the
# bare-LF scan was 3.9k instructions a request here) only show with a head like it.
# shellcheck shell=bash

API_SIGNATURE=$(head -c 256 /dev/zero | tr '\0' 'x' | base64 -w0 | tr '+/' '-_' | tr -d '=')
API_CLAIMS=$(printf '%s' '{"iss":"https://login.id.example/7c1e2b4a-58f0-4d3e-9a61-2f8b0c9d4e15/v2.0","sub":"svc-integration-sync","aud":"api://crm.example/contacts","azp":"3f9a6c2e-1b7d-4e85-a0c4-96d2e7f18b53","tid":"7c1e2b4a-58f0-4d3e-9a61-2f8b0c9d4e15","scp":"contacts.read contacts.write accounts.read","roles":["Integration.Sync","Contacts.ReadWrite"],"iat":1795000000,"nbf":1795000000,"exp":1795003600,"jti":"c0a8012e-6b1f-4f2d-8e3a-5d9c7b4a1f60"}' | base64 -w0 | tr '+/' '-_' | tr -d '=')
API_HEAD=(-H "Authorization: Bearer eyJhbGciOiJSUzI1NiIsInR5cCI6IkpXVCJ9.$API_CLAIMS.$API_SIGNATURE"
    -H "User-Agent: integration-sync/4.2.1 (python-requests/2.31.0)"
    -H "Accept: application/json" -H "Accept-Encoding: gzip, deflate"
    -H "Connection: keep-alive" -H "X-Tenant: acme-prod-eu")
API_PATH="/v1/contacts?limit=100&page=2"
