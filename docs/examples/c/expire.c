/*
 * Expire cache entries everywhere, from C, with the official NATS C client.
 *
 *   apt-get install libnats-dev gcc          # Debian 12: libnats 3.4
 *   gcc -Wall -o expire expire.c -lnats
 *   CACHEBUS_NATS_URL=nats://127.0.0.1:4222 ./expire users user:42 user:43
 *
 * It sends the plain-text form of the Expire payload of docs/PROTOCOL.md,
 * the keys one per line, to <prefix>.expire.<ns> as a JetStream publish,
 * and waits for the event log's acknowledgement: once it prints "stored at
 * seq N", every cache node, memo client and gateway drops the keys, at once
 * if connected, else when it reconnects. A publish that is not answered is
 * sent again with the same Nats-Msg-Id, which the log uses to keep one copy.
 *
 * Variables, as the cachebus commands read them: CACHEBUS_NATS_URL
 * (default nats://127.0.0.1:4222; user:password@ may be in it),
 * CACHEBUS_NATS_TOKEN, CACHEBUS_NATS_CREDS, CACHEBUS_PREFIX (default
 * cachebus). Exit status 0: stored; 1: not stored; 2: bad arguments.
 */
#include <nats/nats.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char *env(const char *name, const char *def)
{
    const char *v = getenv(name);
    return (v != NULL && v[0] != '\0') ? v : def;
}

/* valid_name: [A-Za-z0-9_-]{1,64}, the rule for namespaces and ids. */
static int valid_name(const char *s)
{
    size_t n = strlen(s);
    if (n == 0 || n > 64)
        return 0;
    for (; *s; s++)
        if (!((*s >= 'a' && *s <= 'z') || (*s >= 'A' && *s <= 'Z') ||
              (*s >= '0' && *s <= '9') || *s == '_' || *s == '-'))
            return 0;
    return 1;
}

int main(int argc, char **argv)
{
    if (argc < 3) {
        fprintf(stderr, "usage: %s <namespace> <key>...\n", argv[0]);
        return 2;
    }
    const char *ns = argv[1];
    if (!valid_name(ns)) {
        fprintf(stderr, "expire: namespace \"%s\" must match [A-Za-z0-9_-]{1,64}\n", ns);
        return 2;
    }

    /* The payload: one key a line. A key cannot hold a newline, is 1 to
     * 1024 bytes, and the first must not start with '{' (that would be
     * read as JSON). */
    size_t len = 0;
    for (int i = 2; i < argc; i++) {
        size_t k = strlen(argv[i]);
        if (k == 0 || k > 1024 || strchr(argv[i], '\n') != NULL || (i == 2 && argv[i][0] == '{')) {
            fprintf(stderr, "expire: key \"%s\": 1 to 1024 bytes, no newline, not starting with '{'\n", argv[i]);
            return 2;
        }
        len += k + 1;
    }
    char *payload = malloc(len);
    if (payload == NULL)
        return 1;
    char *p = payload;
    for (int i = 2; i < argc; i++) {
        size_t k = strlen(argv[i]);
        memcpy(p, argv[i], k);
        p += k;
        *p++ = '\n';
    }

    char subject[256];
    snprintf(subject, sizeof subject, "%s.expire.%s", env("CACHEBUS_PREFIX", "cachebus"), ns);

    natsConnection *nc = NULL;
    natsOptions *opts = NULL;
    jsCtx *js = NULL;
    jsPubAck *ack = NULL;
    natsInbox *msgID = NULL;
    jsErrCode jerr = 0;
    int code = 1;

    natsStatus s = natsOptions_Create(&opts);
    if (s == NATS_OK)
        s = natsOptions_SetURL(opts, env("CACHEBUS_NATS_URL", "nats://127.0.0.1:4222"));
    if (s == NATS_OK)
        s = natsOptions_SetName(opts, "expire.c");
    if (s == NATS_OK && getenv("CACHEBUS_NATS_TOKEN") != NULL)
        s = natsOptions_SetToken(opts, getenv("CACHEBUS_NATS_TOKEN"));
    if (s == NATS_OK && getenv("CACHEBUS_NATS_CREDS") != NULL)
        s = natsOptions_SetUserCredentialsFromFiles(opts, getenv("CACHEBUS_NATS_CREDS"), NULL);
    if (s == NATS_OK)
        s = natsConnection_Connect(&nc, opts);
    if (s == NATS_OK)
        s = natsConnection_JetStream(&js, nc, NULL);
    /* A unique id per expire (an inbox name is a fresh NUID), kept across
     * retries so that the log stores the expire once. */
    if (s == NATS_OK)
        s = natsInbox_Create(&msgID);
    if (s == NATS_OK) {
        jsPubOptions po;
        jsPubOptions_Init(&po);
        po.MsgId = msgID;
        po.MaxWait = 2000;
        for (int attempt = 1; attempt <= 5; attempt++) {
            s = js_Publish(&ack, js, subject, payload, (int) len, &po, &jerr);
            /* Timeout or no responders: no stream leader yet, or a lost
             * reply. Anything else will not change on a retry. */
            if (s != NATS_TIMEOUT && s != NATS_NO_RESPONDERS)
                break;
            /* A publish the server refuses (NATS permissions) gets no
             * reply: it shows as a timeout, and as the connection's last
             * error. */
            const char *last = NULL;
            if (natsConnection_GetLastError(nc, &last) == NATS_NOT_PERMITTED) {
                fprintf(stderr, "expire: %s\n", last);
                s = NATS_NOT_PERMITTED;
                break;
            }
            nats_Sleep(100 * attempt);
        }
    }
    if (s == NATS_OK) {
        printf("expire %s stored at seq %llu%s\n", subject, (unsigned long long) ack->Sequence,
               ack->Duplicate ? " (a duplicate: stored before)" : "");
        code = 0;
    } else {
        /* jerr is the JetStream error code, when the log answered with
         * one (10054: message too large...). */
        const char *detail = nats_GetLastError(NULL);
        fprintf(stderr, "expire: %s not stored: %s", subject, natsStatus_GetText(s));
        if (jerr != 0)
            fprintf(stderr, " (JetStream error %d)", (int) jerr);
        if (detail != NULL && detail[0] != '\0')
            fprintf(stderr, ": %s", detail);
        fprintf(stderr, "\n");
    }

    jsPubAck_Destroy(ack);
    natsInbox_Destroy(msgID);
    jsCtx_Destroy(js);
    natsConnection_Destroy(nc);
    natsOptions_Destroy(opts);
    free(payload);
    nats_Close();
    return code;
}
