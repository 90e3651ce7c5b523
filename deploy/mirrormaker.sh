#!/bin/sh
# MirrorMaker 2 in one region of an active-active pair (template.yaml: MirrorMakerService): reads
# the peer region's MSK and writes this region's (MM2 runs in the target region). Cluster aliases
# are the region names, so the default replication policy names the peer's topics
# `<peer>.sequenced_messages`, `<peer>.acks`, `<peer>.forward_<here>` and `<peer>.presence` here, as messaging
# expects (crates/core/src/regions.rs) and as `make regions` runs it locally
# (scripts/mirrormaker/mm2.properties.in).
#
# Environment: CONNECT_REGION, CONNECT_PEER_REGIONS (one peer), KAFKA_BROKERS,
# KAFKA_SASL_USERNAME, KAFKA_SASL_PASSWORD (this region's MSK), PEER_KAFKA_BROKERS,
# PEER_KAFKA_SASL_USERNAME, PEER_KAFKA_SASL_PASSWORD (the peer's), KAFKA_REPLICATION_FACTOR (3).
set -eu
here=${CONNECT_REGION:?} peer=${CONNECT_PEER_REGIONS:?}
rf=${KAFKA_REPLICATION_FACTOR:-3}
config=${MM2_CONFIG:-/tmp/mm2.properties}

scram() { # scram ALIAS USER PASSWORD
  cat <<PROPS
$1.security.protocol = SASL_SSL
$1.sasl.mechanism = SCRAM-SHA-512
$1.sasl.jaas.config = org.apache.kafka.common.security.scram.ScramLoginModule required username="$2" password="$3";
PROPS
}

umask 077
{
  echo "clusters = $peer, $here"
  echo "$peer.bootstrap.servers = ${PEER_KAFKA_BROKERS:?}"
  echo "$here.bootstrap.servers = ${KAFKA_BROKERS:?}"
  scram "$peer" "${PEER_KAFKA_SASL_USERNAME:?}" "${PEER_KAFKA_SASL_PASSWORD:?}"
  scram "$here" "${KAFKA_SASL_USERNAME:?}" "${KAFKA_SASL_PASSWORD:?}"
  cat <<PROPS
$peer->$here.enabled = true
$peer->$here.topics = sequenced_messages, acks, forward_$here, presence
$here->$peer.enabled = false
groups = messaging
sync.group.offsets.enabled = false
sync.topic.acls.enabled = false
refresh.topics.interval.seconds = 30
replication.factor = $rf
checkpoints.topic.replication.factor = $rf
heartbeats.topic.replication.factor = $rf
offset-syncs.topic.replication.factor = $rf
offset.storage.replication.factor = $rf
status.storage.replication.factor = $rf
config.storage.replication.factor = $rf
tasks.max = 4
$here.producer.linger.ms = 1
$peer.consumer.fetch.max.wait.ms = 10
PROPS
} >"$config"

exec java ${JAVA_OPTS:--Xmx768m} -XX:+UseG1GC -XX:+ExitOnOutOfMemoryError \
  -Dlog4j2.configurationFile=/opt/mirrormaker/log4j2.properties -cp '/opt/mirrormaker/libs/*' \
  org.apache.kafka.connect.mirror.MirrorMaker "$config"
