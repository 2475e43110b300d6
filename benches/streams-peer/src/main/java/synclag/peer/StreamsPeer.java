package synclag.peer;

import com.fasterxml.jackson.databind.JsonNode;
import com.fasterxml.jackson.databind.ObjectMapper;
import com.fasterxml.jackson.databind.node.ObjectNode;
import java.time.Duration;
import java.util.ArrayList;
import java.util.List;
import java.util.Properties;
import java.util.concurrent.CountDownLatch;
import org.apache.kafka.clients.consumer.ConsumerConfig;
import org.apache.kafka.common.serialization.Serdes;
import org.apache.kafka.streams.KafkaStreams;
import org.apache.kafka.streams.KeyValue;
import org.apache.kafka.streams.StreamsBuilder;
import org.apache.kafka.streams.StreamsConfig;
import org.apache.kafka.streams.kstream.Consumed;
import org.apache.kafka.streams.kstream.Grouped;
import org.apache.kafka.streams.kstream.JoinWindows;
import org.apache.kafka.streams.kstream.KStream;
import org.apache.kafka.streams.kstream.Materialized;
import org.apache.kafka.streams.kstream.Produced;
import org.apache.kafka.streams.kstream.StreamJoined;
import org.apache.kafka.streams.kstream.TimeWindows;

/**
 * The job `synclag run` does on the load workload, as a Kafka Streams application: a left
 * join of order-created with order-imported by correlation id (the record key) within the
 * workflow window, breach events for the warn and critical SLA tiers and for orders never
 * imported, and per-minute lag summaries of the workflow. JSON in and out; join and
 * aggregate state in RocksDB with changelog topics (the Streams defaults); one stream
 * thread.
 *
 * <p>Arguments: bootstrap servers, application id, created topic, imported topic, breaches
 * topic, lag topic, state directory, warn ms, critical ms, window ms.
 */
public final class StreamsPeer {
    private static final ObjectMapper JSON = new ObjectMapper();
    private static final String WORKFLOW = "order_import";

    private StreamsPeer() {}

    public static void main(String[] args) throws Exception {
        if (args.length != 10) {
            System.err.println(
                    "usage: StreamsPeer BOOTSTRAP APP_ID CREATED_TOPIC IMPORTED_TOPIC"
                            + " BREACHES_TOPIC LAG_TOPIC STATE_DIR WARN_MS CRITICAL_MS WINDOW_MS");
            System.exit(2);
        }
        String bootstrap = args[0];
        String appId = args[1];
        String createdTopic = args[2];
        String importedTopic = args[3];
        String breachesTopic = args[4];
        String lagTopic = args[5];
        String stateDir = args[6];
        long warnMs = Long.parseLong(args[7]);
        long criticalMs = Long.parseLong(args[8]);
        long windowMs = Long.parseLong(args[9]);

        Properties props = new Properties();
        props.put(StreamsConfig.APPLICATION_ID_CONFIG, appId);
        props.put(StreamsConfig.BOOTSTRAP_SERVERS_CONFIG, bootstrap);
        props.put(StreamsConfig.STATE_DIR_CONFIG, stateDir);
        props.put(StreamsConfig.NUM_STREAM_THREADS_CONFIG, 1);
        props.put(StreamsConfig.REPLICATION_FACTOR_CONFIG, 1);
        props.put(StreamsConfig.DEFAULT_KEY_SERDE_CLASS_CONFIG, Serdes.StringSerde.class);
        props.put(StreamsConfig.DEFAULT_VALUE_SERDE_CLASS_CONFIG, Serdes.StringSerde.class);
        // Offsets follow processing about as closely as synclag's do, so "every input
        // record consumed" (committed) means the same for both.
        props.put(StreamsConfig.COMMIT_INTERVAL_MS_CONFIG, 1000);
        props.put(StreamsConfig.consumerPrefix(ConsumerConfig.AUTO_OFFSET_RESET_CONFIG), "earliest");

        StreamsBuilder builder = new StreamsBuilder();
        KStream<String, String> created =
                builder.stream(createdTopic, Consumed.with(Serdes.String(), Serdes.String()));
        KStream<String, String> imported =
                builder.stream(importedTopic, Consumed.with(Serdes.String(), Serdes.String()));

        // Each side is reduced to what the join needs before it is stored.
        KStream<String, String> starts = created.mapValues(StreamsPeer::startOf);
        KStream<String, String> ends = imported.mapValues(StreamsPeer::endOf);

        KStream<String, String> outcomes =
                starts.leftJoin(
                        ends,
                        (start, end) -> outcome(start, end),
                        JoinWindows.ofTimeDifferenceAndGrace(
                                Duration.ofMillis(windowMs), Duration.ofSeconds(5)),
                        StreamJoined.with(Serdes.String(), Serdes.String(), Serdes.String()));

        outcomes.flatMapValues(o -> breaches(o, warnMs, criticalMs))
                .to(breachesTopic, Produced.with(Serdes.String(), Serdes.String()));

        outcomes.filter((k, o) -> o != null && !o.endsWith("|"))
                .map((k, o) -> KeyValue.pair(WORKFLOW, o))
                .groupByKey(Grouped.with(Serdes.String(), Serdes.String()))
                .windowedBy(TimeWindows.ofSizeWithNoGrace(Duration.ofMinutes(1)))
                .aggregate(
                        () -> "0,0,0",
                        (k, o, agg) -> addLag(agg, lagOf(o)),
                        Materialized.with(Serdes.String(), Serdes.String()))
                .toStream()
                .map((w, agg) -> KeyValue.pair(w.key(), lagSummary(w.key(), w.window().start(), agg)))
                .to(lagTopic, Produced.with(Serdes.String(), Serdes.String()));

        KafkaStreams streams = new KafkaStreams(builder.build(), props);
        CountDownLatch done = new CountDownLatch(1);
        Runtime.getRuntime()
                .addShutdownHook(
                        new Thread(
                                () -> {
                                    streams.close(Duration.ofSeconds(10));
                                    done.countDown();
                                }));
        streams.setUncaughtExceptionHandler(
                e -> {
                    System.err.println("stream thread failed: " + e);
                    return org.apache.kafka.streams.errors.StreamsUncaughtExceptionHandler
                            .StreamThreadExceptionResponse.SHUTDOWN_CLIENT;
                });
        streams.start();
        done.await();
    }

    /** `created_ms|channel` of an order-created record (null when unreadable). */
    static String startOf(String json) {
        try {
            JsonNode n = JSON.readTree(json);
            return n.path("created_at").asLong() + "|" + n.path("channel").asText("");
        } catch (Exception e) {
            return null;
        }
    }

    /** `write_ms` of an order-imported outbox record (null when unreadable). */
    static String endOf(String json) {
        try {
            return Long.toString(JSON.readTree(json).path("write_date").asLong());
        } catch (Exception e) {
            return null;
        }
    }

    /** `created_ms|channel|write_ms`, the last part empty when the import never came. */
    static String outcome(String start, String end) {
        if (start == null) {
            return null;
        }
        return start + "|" + (end == null ? "" : end);
    }

    static long lagOf(String outcome) {
        String[] p = outcome.split("\\|", -1);
        return Long.parseLong(p[2]) - Long.parseLong(p[0]);
    }

    static List<String> breaches(String outcome, long warnMs, long criticalMs) {
        List<String> out = new ArrayList<>(2);
        if (outcome == null) {
            return out;
        }
        String[] p = outcome.split("\\|", -1);
        long start = Long.parseLong(p[0]);
        String channel = p[1];
        if (p[2].isEmpty()) {
            out.add(breach("never_arrived", start, channel, -1));
            return out;
        }
        long lag = Long.parseLong(p[2]) - start;
        if (lag >= warnMs) {
            out.add(breach("warn", start, channel, lag));
        }
        if (lag >= criticalMs) {
            out.add(breach("critical", start, channel, lag));
        }
        return out;
    }

    static String breach(String severity, long start, String channel, long lag) {
        ObjectNode n = JSON.createObjectNode();
        n.put("kind", severity.equals("never_arrived") ? "never_arrived" : "breach");
        n.put("severity", severity);
        n.put("workflow", WORKFLOW);
        n.put("started_at_ms", start);
        if (lag >= 0) {
            n.put("lag_ms", lag);
        }
        n.putObject("dimensions").put("channel", channel);
        return n.toString();
    }

    /** `count,sum,max` of lags in ms. */
    static String addLag(String agg, long lag) {
        String[] p = agg.split(",");
        long count = Long.parseLong(p[0]) + 1;
        long sum = Long.parseLong(p[1]) + lag;
        long max = Math.max(Long.parseLong(p[2]), lag);
        return count + "," + sum + "," + max;
    }

    static String lagSummary(String workflow, long windowStart, String agg) {
        String[] p = agg.split(",");
        ObjectNode n = JSON.createObjectNode();
        n.put("workflow", workflow);
        n.put("window_start_ms", windowStart);
        n.put("count", Long.parseLong(p[0]));
        n.put("sum_ms", Long.parseLong(p[1]));
        n.put("max_ms", Long.parseLong(p[2]));
        return n.toString();
    }
}
